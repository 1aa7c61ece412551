// Neurons that most promote a token: the largest direct logit effects on it through the LM head.
// Complete once the tokens stage has run (it stores every token's top-k neurons); before that,
// only neurons that have the token in their own top-k list. One row per neuron: `rank` is the
// token's place in the neuron's list, `token_rank` the neuron's place in the token's list
// (null where the edge was not found that way).
// @param token   the token text, leading space included, e.g. " dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 20)
MATCH (:TokenText {id: $token})-[:SPELLS]->(t:Token)<-[p:PROMOTES]-(n:Neuron)
WHERE n.model = $model OR $model IS NULL
WITH n.id AS neuron, max(p.logit) AS logit,
     min(CASE WHEN p.found = 'neuron' THEN p.rank END) AS rank,
     min(CASE WHEN p.found = 'token' THEN p.rank END) AS token_rank
ORDER BY logit DESC, neuron
LIMIT $limit
// The neurons' other properties only for the rows kept: a hub token has thousands of edges.
MATCH (n:Neuron {id: neuron})
RETURN neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       logit, rank, token_rank, n.explanation AS explanation
ORDER BY logit DESC, neuron
