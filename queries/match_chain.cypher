// Chains of Hungarian matches from a neuron: every MATCHES edge reachable in up to `hops`
// steps (at most 8), one row per edge, nearest first. Each row names the neuron it was
// matched from, so the chain can be drawn.
// @param neuron  neuron id MODEL/LAYER/INDEX to start from (required)
// @param hops    longest chain, in matches, 1 to 8 (default: 4)
// @param method  follow only matches of this method (string, default: null = every method)
// @param run     follow only matches of this matching run (string, default: null = every run)
// Each path's last edge and the node before it are taken from the path itself
// (relationships(p)[-1], nodes(p)[-2]): a further MATCH hop after a variable-length path is
// planned as a scan of every Neuron. Without a method or run, the all() over the path's
// edges is skipped: evaluated, it costs more than the walk.
WITH $method AS only_method, $run AS only_run
MATCH p = (n:Neuron {id: $neuron})-[:MATCHES*1..8]->(m:Neuron)
WHERE length(p) <= $hops
  AND ((only_method IS NULL AND only_run IS NULL)
       OR all(x IN relationships(p) WHERE (x.method = only_method OR only_method IS NULL) AND (x.run = only_run OR only_run IS NULL)))
UNWIND [relationships(p)[-1]] AS r
UNWIND [nodes(p)[-2]] AS prev
RETURN min(length(p)) AS hops, prev.id AS matched_from, m.id AS neuron, m.model AS model,
       m.layer AS layer, m.idx AS idx, r.similarity AS similarity, r.method AS method,
       r.run AS run, m.explanation AS explanation
ORDER BY hops, matched_from, neuron, method, run
