// The tokens one neuron suppresses most (most negative direct logit effect first).
// (Its own top-k list: edges the tokens stage found from the token side are left out.)
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
// @param limit   rows to return (default: 10)
MATCH (n:Neuron {id: $neuron})-[s:SUPPRESSES]->(t:Token)
WHERE s.found = 'neuron'
RETURN s.rank AS rank, t.text AS token, s.logit AS logit, t.id AS token_id
ORDER BY logit, token_id
LIMIT $limit
