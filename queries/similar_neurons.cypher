// Neurons most similar to one neuron under a similarity method (kNN edges), in other
// layers (or other models) unless same_layer is true.
// @param neuron      neuron id MODEL/LAYER/INDEX (required)
// @param method      explanation | output_weights | input_weights | n2g | ... (string, default: null = every method)
// @param same_layer  also return neurons of the neuron's own layer (default: false)
// @param limit       rows to return (default: 20)
MATCH (n:Neuron {id: $neuron})-[s:SIMILAR_TO]->(m:Neuron)
WHERE (s.method = $method OR $method IS NULL)
  AND (m.layer <> n.layer OR m.model <> n.model OR $same_layer)
RETURN m.id AS neuron, m.model AS model, m.layer AS layer, m.idx AS idx,
       s.method AS method, s.score AS score, m.explanation AS explanation
ORDER BY score DESC, neuron, method
LIMIT $limit
