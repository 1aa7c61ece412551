// Neurons in a layer range, filtered by activation density, maximum activation and
// explanation score. Every bound is optional; neurons lacking a bounded statistic are left
// out. (`nkb show` gives a neuron's explanation: reading every neuron's text would double
// the cost of the scan.)
// @param model       restrict to one model (string, default: null = all models)
// @param min_layer   lowest layer (int, default: null = no bound)
// @param max_layer   highest layer (int, default: null = no bound)
// @param min_density lowest fraction of tokens the neuron fires on (float, default: null = no bound)
// @param max_density highest fraction of tokens the neuron fires on (float, default: null = no bound)
// @param min_max_act lowest maximum activation (float, default: null = no bound)
// @param min_score   lowest explanation score (float, default: null = no bound)
// @param limit       rows to return (default: 100)
MATCH (n:Neuron)
WHERE (n.model = $model OR $model IS NULL)
  AND (n.layer >= $min_layer OR $min_layer IS NULL)
  AND (n.layer <= $max_layer OR $max_layer IS NULL)
  AND (n.density >= $min_density OR $min_density IS NULL)
  AND (n.density <= $max_density OR $max_density IS NULL)
  AND (n.max_act >= $min_max_act OR $min_max_act IS NULL)
  AND (n.explanation_score >= $min_score OR $min_score IS NULL)
// The id is built from its parts (kb.ids: MODEL/LAYER/INDEX) rather than read: the embedded
// engine reads a returned property for every neuron the scan passes, and the ids are the one
// costly column (5 of 7 ms on the demo KB).
RETURN n.model + '/' + toString(n.layer) + '/' + toString(n.idx) AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       n.density AS density, n.max_act AS max_act, n.explanation_score AS score
ORDER BY model, layer, idx
LIMIT $limit
