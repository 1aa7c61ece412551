// One neuron's activation records: the snippets it fires on most (or its random or quantile
// samples), each with the per-token activations.
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
// @param kind    top | random | quantile_<k> (default: "top")
// @param limit   rows to return (default: 10)
MATCH (n:Neuron {id: $neuron})-[a:ACTIVATES_ON]->(s:Snippet)
WHERE a.kind = $kind
RETURN a.rank AS rank, a.max AS max_act, a.position AS position, s.id AS snippet,
       s.tokens AS tokens, a.activations AS activations, s.text AS text
ORDER BY rank, snippet
LIMIT $limit
