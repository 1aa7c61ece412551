// The tokens one neuron suppresses most (most negative direct logit effect first).
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
// @param limit   rows to return (default: 10)
MATCH (n:Neuron {id: $neuron})-[s:SUPPRESSES]->(t:Token)
RETURN s.rank AS rank, t.text AS token, s.logit AS logit, t.id AS token_id
ORDER BY logit, token_id
LIMIT $limit
