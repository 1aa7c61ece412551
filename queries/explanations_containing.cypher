// Explanations whose text contains a phrase (case-insensitive), with the neuron they explain.
// The explanation id names its explainer and method: <neuron>/<explainer>/<method>.
// @param phrase  text to look for, e.g. "dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 50)
MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation)
WHERE toLower(e.text) CONTAINS toLower($phrase) AND (e.model = $model OR $model IS NULL)
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       e.text AS text, e.id AS explanation
ORDER BY model, layer, idx, explanation
LIMIT $limit
