// The tokens whose direction one neuron's input weights read, per input matrix (gate, up, in).
// (Its own top-k lists: edges the tokens stage found from the token side are left out.)
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
// @param limit   tokens per input matrix: those ranked below this (default: 10)
MATCH (n:Neuron {id: $neuron})-[r:READS]->(t:Token)
WHERE r.found = 'neuron' AND r.rank < $limit
RETURN r.via AS via, r.rank AS rank, t.text AS token, r.weight AS weight, t.id AS token_id
ORDER BY via, rank, token_id
