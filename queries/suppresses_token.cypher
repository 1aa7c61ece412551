// Neurons that most suppress a token: the most negative direct logit effects on it.
// @param token   the token text, leading space included, e.g. " dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 20)
MATCH (n:Neuron)-[s:SUPPRESSES]->(t:Token)
WHERE t.text = $token AND (n.model = $model OR $model IS NULL)
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       s.logit AS logit, s.rank AS rank, n.explanation AS explanation
ORDER BY logit, neuron
LIMIT $limit
