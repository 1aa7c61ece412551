// One neuron's explanations, one row per score (a row with empty score columns when unscored).
// @param neuron  neuron id MODEL/LAYER/INDEX (required)
MATCH (n:Neuron {id: $neuron})-[:EXPLAINED_BY]->(e:Explanation)
OPTIONAL MATCH (e)-[:HAS_SCORE]->(s:Score)
RETURN e.id AS explanation, e.explainer AS explainer, e.method AS method, e.text AS text,
       s.method AS score_method, s.split AS split, s.scorer AS scorer, s.value AS score
ORDER BY explanation, coalesce(score_method, ''), coalesce(split, ''), coalesce(scorer, '')
