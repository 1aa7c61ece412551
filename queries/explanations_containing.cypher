// Explanations whose text contains a phrase (case-insensitive), with the neuron they explain.
// The explanation id names its explainer and method: <neuron>/<explainer>/<method>.
// @param phrase  text to look for, e.g. "dog" (required)
// @param model   restrict to one model (string, default: null = all models)
// @param limit   rows to return (default: 50)
// @derived term  key_term(phrase): the phrase's longest run between ASCII spaces and punctuation, or '*'
//                for a phrase with none (kb.terms; outside nkb, pass it yourself)
// Only the explanations that MENTION a term containing that run can contain the phrase
// (kb.terms says why), so only their texts are lower-cased and searched. One explanation can
// mention several such terms: DISTINCT on the nodes, before their text is read.
MATCH (t:Term)<-[:MENTIONS]-(e:Explanation)<-[:EXPLAINED_BY]-(n:Neuron)
WHERE toLower(t.id) CONTAINS toLower($term)
  AND toLower(e.text) CONTAINS toLower($phrase) AND (e.model = $model OR $model IS NULL)
WITH DISTINCT n, e
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       e.text AS text, e.id AS explanation
ORDER BY model, layer, idx, explanation
LIMIT $limit
