// Neurons whose input weights read a token's direction most strongly.
// Complete once the tokens stage has run (see promotes_token); one row per neuron and input
// matrix, `rank` in the neuron's own list, `token_rank` in the token's list (null where not
// found that way).
// @param token   the token text, leading space included, e.g. " dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 20)
MATCH (:TokenText {id: $token})-[:SPELLS]->(t:Token)<-[r:READS]-(n:Neuron)
WHERE n.model = $model OR $model IS NULL
WITH n.id AS neuron, r.via AS via, max(r.weight) AS weight,
     min(CASE WHEN r.found = 'neuron' THEN r.rank END) AS rank,
     min(CASE WHEN r.found = 'token' THEN r.rank END) AS token_rank
ORDER BY weight DESC, neuron, via
LIMIT $limit
MATCH (n:Neuron {id: neuron})
RETURN neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       via, weight, rank, token_rank, n.explanation AS explanation
ORDER BY weight DESC, neuron, via
