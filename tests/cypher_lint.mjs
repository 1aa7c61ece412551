// Lints Cypher with Neo4j's own parser and semantic analysis (npm @neo4j-cypher/language-support,
// installed into .ci/node_modules by .ci/install-cypher-lint).
//
//   node tests/cypher_lint.mjs < request.json > diagnostics.json
//   node tests/cypher_lint.mjs --check      exits 0 when the linter loads
//
// request.json: {"schema": {labels, relationshipTypes, propertyKeys, graphSchema, ...},
//                "queries": [{"name": "...", "query": "...", "parameters": {"x": 1}}]}
// The reply lists, per query, its diagnostics: {severity: "error"|"warning"|..., message, line, column}.
// Neo4j 5's built-in functions and procedures come from the package's own registry (its
// testData.mockSchema), so an unknown function or procedure is an error too.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const prefix = process.env.NKB_CYPHER_LINT_DIR || path.join(here, "..", ".ci");
const require = createRequire(path.join(prefix, "package.json"));
const lint = require("@neo4j-cypher/language-support");

if (process.argv.includes("--check")) {
  const probe = lint.lintCypherQuery("MATCH (n RETURN n", {}).diagnostics;
  if (!probe.some((d) => d.severity === 1)) {
    console.error("cypher_lint: the linter loads but reports no error for a broken query");
    process.exit(1);
  }
  console.log("cypher_lint: ok");
  process.exit(0);
}

const SEVERITY = { 1: "error", 2: "warning", 3: "information", 4: "hint" };

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);

const builtins = lint.testData?.mockSchema ?? {};
const base = {
  defaultLanguage: "CYPHER 5",
  functions: builtins.functions,
  procedures: builtins.procedures,
  ...request.schema,
};

const reply = request.queries.map(({ name, query, parameters }) => {
  const { diagnostics } = lint.lintCypherQuery(query, { ...base, parameters: parameters ?? {} });
  return {
    name,
    diagnostics: diagnostics.map((d) => ({
      severity: SEVERITY[d.severity] ?? String(d.severity),
      message: d.message,
      line: d.range.start.line + 1,
      column: d.range.start.character + 1,
    })),
  };
});
process.stdout.write(JSON.stringify(reply));
