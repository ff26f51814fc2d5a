// Loads GGUF files in the llama.cpp that node-llama-cpp ships prebuilt (CPU
// only), evaluates a fixed token sequence and writes every position's logits.
//
//	node logits.mjs [--tokens 1,2,3] [--text-file T] [--out DIR] [--threads 1] [--ctx 64]
//	    [--flash-attention auto|true|false] MODEL.gguf...
//
// For each model it prints one JSON object on a line of stdout:
//
//	{"model", "loaded", "error", "log", "n_vocab", "tokens", "tokenized", "logits_file", "llama_cpp"}
//
// tokens are the ones evaluated (--tokens, else the text tokenized, without
// BOS); tokenized is the text (--text-file) as this llama.cpp tokenizes it
// (without BOS); logits_file holds len(tokens) rows of n_vocab float32
// (little-endian), the raw logits after each token. log has llama.cpp's
// warnings and errors while the model loaded and ran (each once), and its
// line on flash attention.
import {writeFileSync, readFileSync} from "node:fs";
import {join} from "node:path";
import {parseArgs} from "node:util";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const {values: opts, positionals: models} = parseArgs({
    allowPositionals: true,
    options: {
        "tokens": {type: "string"},
        "text-file": {type: "string"},
        "out": {type: "string"},
        "threads": {type: "string", default: "1"},
        "ctx": {type: "string", default: "64"},
        "flash-attention": {type: "string", default: "auto"},
    },
});
if (models.length === 0) {
    console.error("usage: node logits.mjs [--tokens 1,2,3] [--text-file T] [--out DIR] [--threads 1] [--ctx 64] [--flash-attention auto|true|false] MODEL.gguf...");
    process.exit(2);
}
const threads = Number(opts.threads);
const ctxSize = Number(opts.ctx);
const flashAttention = opts["flash-attention"] === "auto" ? "auto" : opts["flash-attention"] === "true";
const text = opts["text-file"] != null ? readFileSync(opts["text-file"], "utf8") : null;
const given = opts.tokens != null ? opts.tokens.split(",").filter(s => s !== "").map(Number) : null;

let log = [];
const llama = await getLlama({
    gpu: false,
    build: "never", // prebuilt binaries only: never compile, never download
    logLevel: LlamaLogLevel.info,
    logger: (level, message) => {
        message = message.trimEnd();
        // Warnings and errors, and whether flash attention is on.
        const keep = level === LlamaLogLevel.warn || level === LlamaLogLevel.error || level === LlamaLogLevel.fatal ||
            /Flash Attention/.test(message);
        if (message !== "" && keep && !log.includes(`${level}: ${message}`))
            log.push(`${level}: ${message}`);
    },
    maxThreads: threads,
});
const release = llama.llamaCppRelease;

for (const [i, path] of models.entries()) {
    log = [];
    const r = {model: path, loaded: false, error: null, log: null, llama_cpp: release.release, build_type: release.builtFromSource ? "source" : "prebuilt"};
    let model = null, context = null;
    try {
        model = await llama.loadModel({modelPath: path, gpuLayers: 0, useMmap: true, ignoreMemorySafetyChecks: true});
        r.loaded = true;
        r.n_vocab = model.tokens.vocabularySize ?? model.fileInsights?.vocabularySize;
        if (text != null)
            r.tokenized = Array.from(model.tokenize(text, false)); // no BOS, special tokens as plain text
        const tokens = given ?? Array.from(model.tokenize(text ?? "", false));
        r.tokens = tokens;
        context = await model.createContext({
            contextSize: ctxSize,
            batchSize: ctxSize,
            threads,
            sequences: 1,
            flashAttention,
            ignoreMemorySafetyChecks: true,
        });
        const seq = context.getSequence();
        const out = await seq.controlledEvaluate(tokens.map(t => [t, {generateNext: {logits: true}}]));
        const nVocab = model.tokens.vocabularySize ?? out[0].next.logits.size;
        r.n_vocab = nVocab;
        const rows = new Float32Array(tokens.length * nVocab).fill(Number.NaN);
        for (let p = 0; p < tokens.length; p++) {
            const logits = out[p]?.next?.logits;
            if (logits == null)
                throw new Error(`no logits at position ${p}`);
            if (logits.size !== nVocab)
                throw new Error(`position ${p}: ${logits.size} logits for a vocabulary of ${nVocab}`);
            for (const [tok, v] of logits)
                rows[p * nVocab + tok] = v;
        }
        if (opts.out != null) {
            r.logits_file = join(opts.out, `${i}.f32`);
            writeFileSync(r.logits_file, Buffer.from(rows.buffer));
        }
    } catch (err) {
        r.error = String(err?.message ?? err);
    } finally {
        try {
            await context?.dispose();
            await model?.dispose();
        } catch (err) {
            r.error ??= `dispose: ${err?.message ?? err}`;
        }
    }
    await new Promise(resolve => setTimeout(resolve, 20)); // log lines arrive asynchronously
    r.log = log;
    process.stdout.write(JSON.stringify(r) + "\n");
}
await llama.dispose();
