// Builds the drain-time component with the componentize-js API (the `jco componentize`
// command did not work here). Usage: node build.mjs OUT.wasm, with COMPONENTIZE_JS_MODULES naming the
// node_modules that holds @bytecodealliance/componentize-js (../build.sh sets it up).
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// The package is ESM-only and lives outside the repository, so import its entry by path.
const pkg = join(process.env.COMPONENTIZE_JS_MODULES, '@bytecodealliance', 'componentize-js');
const { componentize } = await import(pathToFileURL(join(pkg, 'src', 'componentize.js')).href);

const { component } = await componentize({
  sourcePath: join(here, 'policy.js'),
  witPath: join(here, '..', '..', 'wit'),
  worldName: 'scaling-policy',
  // No WASI at all: a policy sees no clock, randomness or stdio.
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(process.argv[2], component);
