// node_wasi.mjs: runs a WASI preview1 command under Node's built-in node:wasi
// (V8), the peer that bench/wasi_vs_node.sh measures `keel run` against.
//
//   node --no-warnings bench/node_wasi.mjs [--dir HOST[::GUEST]]... [--env K=V]...
//        PROGRAM.wasm [-- ARGS...]
//
// The flags mirror `keel run`: stdio is passed through, argv[0] is the path
// of the .wasm as given, and the process exits with the guest's exit code.
// --no-warnings silences node's ExperimentalWarning for WASI.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

function usage(msg) {
  process.stderr.write(`node_wasi.mjs: ${msg}\n` +
    'usage: node --no-warnings node_wasi.mjs [--dir HOST[::GUEST]]... [--env K=V]... PROGRAM.wasm [-- ARGS...]\n');
  process.exit(64);
}

const argv = process.argv.slice(2);
const preopens = {};
const env = {};
let program;
let args = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--') { args = argv.slice(i + 1); break; }
  if (a === '--dir' || a === '--env') {
    const v = argv[++i];
    if (v === undefined) usage(`${a} needs a value`);
    if (a === '--dir') {
      const [host, guest] = v.includes('::') ? v.split('::', 2) : [v, v];
      preopens[guest] = host;
    } else {
      const eq = v.indexOf('=');
      if (eq <= 0) usage(`--env wants K=V, got ${v}`);
      env[v.slice(0, eq)] = v.slice(eq + 1);
    }
  } else if (program === undefined) {
    program = a;
  } else {
    args.push(a);
  }
}
if (program === undefined) usage('no program given');

let bytes;
try {
  bytes = await readFile(program);
} catch (e) {
  process.stderr.write(`node_wasi.mjs: ${program}: ${e.message}\n`);
  process.exit(66);
}
const wasi = new WASI({ version: 'preview1', args: [program, ...args], env, preopens, returnOnExit: true });
const module = await WebAssembly.compile(bytes);
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const code = wasi.start(instance);
process.exitCode = code;
