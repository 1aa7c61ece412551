// Neurons that most suppress a token: the most negative direct logit effects on it.
// Complete once the tokens stage has run (see promotes_token); one row per neuron, `rank` in
// the neuron's own list, `token_rank` in the token's list (null where not found that way).
// @param token   the token text, leading space included, e.g. " dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 20)
MATCH (:TokenText {id: $token})-[:SPELLS]->(t:Token)<-[s:SUPPRESSES]-(n:Neuron)
WHERE n.model = $model OR $model IS NULL
WITH n.id AS neuron, min(s.logit) AS logit,
     min(CASE WHEN s.found = 'neuron' THEN s.rank END) AS rank,
     min(CASE WHEN s.found = 'token' THEN s.rank END) AS token_rank
ORDER BY logit, neuron
LIMIT $limit
MATCH (n:Neuron {id: neuron})
RETURN neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       logit, rank, token_rank, n.explanation AS explanation
ORDER BY logit, neuron
