// Runs cases through the console's verifier module in Node; tests/console/test_verifier_vectors.py
// feeds it JSON on stdin ({module, cases}) and reads one result per case on stdout.
import { pathToFileURL } from "node:url";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { module, cases } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const v = await import(pathToFileURL(module).href);
const hex = (text) => v.hexToBytes("case", text, null, false);

async function run(c) {
  switch (c.op) {
    case "inclusion":
      try {
        const root = await v.rootFromInclusionProof(c.index, c.size, hex(c.leaf), c.proof.map(hex));
        return { valid: v.bytesToHex(root) === "0x" + c.root };
      } catch (error) {
        return { valid: false, error: error.message };
      }
    case "leaf_input":
      try {
        const data = hex(c.encoded);
        const decoded = v.decodeLeafInput(data);
        return { ok: true, seq: String(decoded.seq), kind: decoded.kind,
          leaf_hash: v.bytesToHex(await v.leafHash(data)) };
      } catch (error) {
        return { ok: false, error: error.message };
      }
    case "leaf_hash":
      return { hash: v.bytesToHex(await v.leafHash(hex(c.leaf))) };
    case "root":
      return { root: v.bytesToHex(await v.merkleRoot(c.leaf_hashes.map(hex))) };
    case "head":
      return { head: v.bytesToHex(await v.nextHead(hex(c.previous_head), hex(c.root), c.first_seq, c.count)) };
    case "commitment":
      try {
        return { ok: true, commitment: v.bytesToHex(await v.commitment(hex(c.key), hex(c.canonical))) };
      } catch (error) {
        return { ok: false, error: error.message };
      }
    case "receipt":
      return v.verifyReceipt(c.receipt, { rpcUrl: c.rpc_url ?? null, contract: c.contract ?? null });
    case "bundle":
      return v.verifyBundle(c.text, { rpcUrl: c.rpc_url ?? null, contract: c.contract ?? null });
    case "constants":
      return { batch_selector: v.BATCH_SELECTOR, batch_anchored_topic: v.BATCH_ANCHORED_TOPIC };
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

const results = [];
for (const c of cases) results.push(await run(c));
process.stdout.write(JSON.stringify(results));
