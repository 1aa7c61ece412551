// Neurons whose Neuron-to-Graph pattern fires on a token, optionally only right after a
// context token. The N2G token index (FIRES_ON) finds the candidates and their tries confirm:
// a root of the neuron's trie (N2G_ROOT) is the token and, with a context, the node one step
// back from it (N2G_PREV) is the context token. context_matches counts such patterns.
// @param token    the firing token's text, e.g. " dog" (required)
// @param context  the token right before it in the pattern, e.g. " hot" (string, default: null = any context)
// @param model    restrict to one model (string, default: null = all models)
// @param min_layer  lowest layer to search (int, default: null = no bound)
// @param max_layer  highest layer to search (int, default: null = no bound)
// @param limit    rows to return (default: 20)
MATCH (:TokenText {id: $token})-[:SPELLS]->(t:Token)<-[f:FIRES_ON]-(n:Neuron), (n)-[:N2G_ROOT]->(root:N2GNode)
WHERE (n.model = $model OR $model IS NULL)
  AND (n.layer >= $min_layer OR $min_layer IS NULL) AND (n.layer <= $max_layer OR $max_layer IS NULL)
// The token tests come after WITH on purpose: inside a MATCH, LadybugDB turns them into
// scans of every N2GNode instead of walking the tries of the few candidates. One fixed step
// back, not N2G_PREV*1..k: LadybugDB's variable-length join costs tens of ms on a full
// model's tries, and each further OPTIONAL MATCH step several more.
WITH n, f, root, root.token AS fired
WHERE fired = $token
OPTIONAL MATCH (root)-[:N2G_PREV]->(back:N2GNode)
WITH n, f, back.token AS before
WITH n, f, sum(CASE WHEN before = $context THEN 1 ELSE 0 END) AS context_matches
WHERE context_matches > 0 OR $context IS NULL
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       f.activation AS activation, context_matches, n.n2g_f1 AS n2g_f1, n.explanation AS explanation
ORDER BY activation DESC, neuron
LIMIT $limit
