// Neurons whose input weights read a token's direction most strongly.
// @param token   the token text, leading space included, e.g. " dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 20)
MATCH (n:Neuron)-[r:READS]->(t:Token)
WHERE t.text = $token AND (n.model = $model OR $model IS NULL)
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       r.via AS via, r.weight AS weight, r.rank AS rank, n.explanation AS explanation
ORDER BY weight DESC, neuron, via
LIMIT $limit
