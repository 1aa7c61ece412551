// Neurons whose Neuron-to-Graph pattern fires on a token, optionally only right after a
// context token. The N2G token index (FIRES_ON) finds the neurons: one row per neuron and
// token it fires on (several tokens can decode to the same text). With a context, the
// trie confirms: context_matches counts the nodes one step back from that token's root that
// are the context token (any token with that text, and the wildcard for '*').
// @param token    the firing token's text, e.g. " dog" (required)
// @param context  the token right before it in the pattern, e.g. " hot" (string, default: null = any context)
// @param model    restrict to one model (string, default: null = all models)
// @param min_layer  lowest layer to search (int, default: null = no bound)
// @param max_layer  highest layer to search (int, default: null = no bound)
// @param limit    rows to return (default: 20)
MATCH (:TokenText {id: $token})-[:SPELLS]->(t:Token)<-[f:FIRES_ON]-(n:Neuron)
WHERE (n.model = $model OR $model IS NULL)
  AND (n.layer >= $min_layer OR $min_layer IS NULL) AND (n.layer <= $max_layer OR $max_layer IS NULL)
// The context's nodes are found by key (<neuron>/<firing token id>.<context token id>, in the
// firing token's tokenizer; -1 for the wildcard '*'): walking the trie made LadybugDB scan
// every N2G node.
OPTIONAL MATCH (:TokenText {id: $context})-[:SPELLS]->(c:Token)
WHERE c.tokenizer = t.tokenizer
WITH n, f, t, collect(c.token_id) + CASE WHEN $context = '*' THEN [-1] ELSE [] END AS context_ids
UNWIND CASE WHEN size(context_ids) = 0 THEN [null] ELSE context_ids END AS context_id
OPTIONAL MATCH (back:N2GNode {id: n.id + '/' + toString(t.token_id) + '.' + toString(context_id)})
WITH n, f, count(back) AS context_matches
WHERE context_matches > 0 OR $context IS NULL
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       f.activation AS activation, context_matches, n.n2g_f1 AS n2g_f1, n.explanation AS explanation
ORDER BY activation DESC, neuron
LIMIT $limit
