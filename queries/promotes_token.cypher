// Neurons that most promote a token: the largest direct logit effects on it through the LM head.
// @param token   the token text, leading space included, e.g. " dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 20)
MATCH (n:Neuron)-[p:PROMOTES]->(t:Token)
WHERE t.text = $token AND (n.model = $model OR $model IS NULL)
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       p.logit AS logit, p.rank AS rank, n.explanation AS explanation
ORDER BY logit DESC, neuron
LIMIT $limit
