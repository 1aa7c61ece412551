// The models in the store, with their shape and how many neurons each holds.
MATCH (m:Model)
// Counting the edges, not the neurons at their ends: the count then reads no Neuron.
OPTIONAL MATCH (m)-[r:HAS_NEURON]->()
RETURN m.id AS model, m.kind AS kind, m.architecture AS architecture, m.source AS source,
       m.n_layers AS n_layers, m.d_mlp AS d_mlp, m.tokenizer AS tokenizer, count(r) AS neurons
ORDER BY model
