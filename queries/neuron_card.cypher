// One neuron's statistics and its best explanation (no row when the neuron does not exist).
// @param neuron  neuron id MODEL/LAYER/INDEX, e.g. smollm2-135m/3/1024 (required)
MATCH (n:Neuron {id: $neuron})
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx, n.kind AS kind,
       n.max_act AS max_act, n.min_act AS min_act, n.mean_act AS mean_act, n.var_act AS var_act,
       n.density AS density, n.n_tokens AS n_tokens,
       n.n2g_precision AS n2g_precision, n.n2g_recall AS n2g_recall, n.n2g_f1 AS n2g_f1,
       n.explanation AS explanation, n.explanation_score AS explanation_score
