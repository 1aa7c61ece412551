// The models in the store, with their shape and how many neurons each holds.
MATCH (m:Model)
OPTIONAL MATCH (m)-[:HAS_NEURON]->(n:Neuron)
RETURN m.id AS model, m.kind AS kind, m.architecture AS architecture, m.source AS source,
       m.n_layers AS n_layers, m.d_mlp AS d_mlp, m.tokenizer AS tokenizer, count(n) AS neurons
ORDER BY model
