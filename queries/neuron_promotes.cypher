// The tokens one neuron promotes most (largest direct logit effect first).
// (Its own top-k list: edges the tokens stage found from the token side are left out.)
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
// @param limit   rows to return (default: 10)
MATCH (n:Neuron {id: $neuron})-[p:PROMOTES]->(t:Token)
WHERE p.found = 'neuron'
RETURN p.rank AS rank, t.text AS token, p.logit AS logit, t.id AS token_id
ORDER BY logit DESC, token_id
LIMIT $limit
