// One neuron's Neuron-to-Graph trie: every node, with the path of token ids from the root
// (the firing token) in its id. No row when the neuron has no graph.
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
MATCH (:Neuron {id: $neuron})-[:HAS_N2G_NODE]->(x:N2GNode)
RETURN x.id AS id, x.token AS token, x.token_id AS token_id, x.activation AS activation,
       x.importance AS importance, x.is_end AS is_end, x.depth AS depth
ORDER BY depth, id
