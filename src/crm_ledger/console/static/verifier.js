// The in-browser verifier: a crm-ledger receipt (or export bundle) checked with nothing but
// WebCrypto's SHA-256 and the chain's JSON-RPC. It asks the crm-ledger service nothing.
//
// Exports: FormatError, hexToBytes, bytesToHex, sha256, leafHash, nodeHash, merkleRoot,
// rootFromInclusionProof, nextHead, decodeLeafInput, commitment, parseReceipt, checkReceipt,
// checkOnChain, verifyReceipt, verifyBundle, RpcClient, BATCH_ANCHORED_TOPIC, BATCH_SELECTOR.
//
// The same byte layouts as src/crm_ledger/ledger (docs/ledger-format.md): leaf hash =
// SHA-256(0x00 ‖ leaf input), node = SHA-256(0x01 ‖ left ‖ right), RFC 9162 §2.1.3.2 audit
// paths, head = SHA-256(previous head ‖ root ‖ uint64 first seq ‖ uint32 count). A step is
// {name, status: "ok" | "failed" | "skipped", detail, expected?, found?}. Runs in browsers and
// in Node 20+ (globalThis.crypto.subtle and fetch), so tests can run it either way.

export const RECEIPT_FORMAT = "crm-ledger/receipt/v1";
export const BUNDLE_FORMAT = "crm-ledger/bundle/v1";
/** keccak256("batch(uint256)")[:4]; tests check it against the compiled ABI. */
export const BATCH_SELECTOR = "0x0eaa75fe";
/** keccak256("BatchAnchored(uint256,uint64,uint32,bytes32,bytes32)"). */
export const BATCH_ANCHORED_TOPIC =
  "0x98172f958c368e0dc54255b2ddc6e5e80000d8df7a60ddf5a6f0322636614f67";

const HASH_SIZE = 32;
const LEAF_INPUT_SIZE = 74;
const FORMAT_VERSION = 1;
const MAX_AUDIT_PATH = 32;
const KINDS = { 1: "interaction", 2: "order", 3: "erasure", 4: "access" };
const RECEIPT_FIELDS = ["format", "record_id", "seq", "leaf_input", "leaf_hash", "leaf_index",
  "tree_size", "audit_path", "batch", "chain"];
const BATCH_FIELDS = ["id", "first_seq", "count", "root", "previous_head", "head"];
const CHAIN_FIELDS = ["chain_id", "contract", "epoch", "tx_hash", "block_number", "block_hash"];

/** A receipt or bundle that cannot be read; the message names the field. */
export class FormatError extends Error {}

/** A JSON-RPC node that cannot be reached or answered with an error. */
export class RpcError extends Error {}

// Bytes -----------------------------------------------------------------------------------

/** 0x-hex (or bare hex when `prefixed` is false) to bytes, exactly `size` bytes if given. */
export function hexToBytes(field, value, size = null, prefixed = true) {
  const what = size === null ? "0x-hex bytes" : `${size} bytes of ${prefixed ? "0x-" : ""}hex`;
  if (typeof value !== "string") throw new FormatError(`${field} must be ${what}`);
  const digits = prefixed ? value.slice(2) : value;
  if ((prefixed && !value.startsWith("0x")) || !/^[0-9a-fA-F]*$/.test(digits)) {
    throw new FormatError(`${field} must be ${what}, got ${JSON.stringify(value.slice(0, 20))}`);
  }
  if (digits.length % 2) throw new FormatError(`${field} has an odd number of hex digits`);
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.substr(i * 2, 2), 16);
  if (size !== null && out.length !== size) {
    throw new FormatError(`${field} must be ${what}, got ${out.length}`);
  }
  return out;
}

/** Bytes to lower-case 0x-hex. */
export function bytesToHex(bytes) {
  return "0x" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function uintBytes(value, size) {
  let n = BigInt(value);
  if (n < 0n || n >= 1n << BigInt(8 * size)) {
    throw new FormatError(`${value} does not fit in ${8 * size} bits`);
  }
  const out = new Uint8Array(size);
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

// Hashes ----------------------------------------------------------------------------------

/** SHA-256 with the platform's WebCrypto. */
export async function sha256(bytes) {
  return new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
}

/** RFC 6962 leaf hash: SHA-256(0x00 ‖ leaf input). */
export function leafHash(leafInput) {
  return sha256(concat(Uint8Array.of(0), leafInput));
}

/** RFC 6962 interior node: SHA-256(0x01 ‖ left ‖ right). */
export function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

/** RFC 6962 §2.1.1 tree hash of leaf hashes (SHA-256 of nothing for an empty tree). */
export async function merkleRoot(leafHashes) {
  if (leafHashes.length === 0) return sha256(new Uint8Array());
  if (leafHashes.length === 1) return leafHashes[0];
  let split = 1;
  while (split * 2 < leafHashes.length) split *= 2;
  const [left, right] = await Promise.all([
    merkleRoot(leafHashes.slice(0, split)),
    merkleRoot(leafHashes.slice(split)),
  ]);
  return nodeHash(left, right);
}

/**
 * RFC 9162 §2.1.3.2: the root an audit path leads to from leaf `index` of `treeSize`.
 * Throws FormatError when the path cannot belong to a tree of that size. Plain arithmetic,
 * not bit operators: indexes go up to 2^32 - 1, past JavaScript's 32-bit signed shifts.
 */
export async function rootFromInclusionProof(index, treeSize, leaf, proof) {
  if (treeSize < 1 || index < 0 || index >= treeSize) {
    throw new FormatError(`leaf index ${index} is outside a tree of ${treeSize} leaves`);
  }
  if (leaf.length !== HASH_SIZE || proof.some((p) => p.length !== HASH_SIZE)) {
    throw new FormatError("every hash in a proof must be 32 bytes");
  }
  let fn = index;
  let sn = treeSize - 1;
  let r = leaf;
  const odd = (n) => n % 2 === 1;
  const half = (n) => Math.floor(n / 2);
  for (const p of proof) {
    if (sn === 0) throw new FormatError("the audit path is longer than the tree is deep");
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new FormatError("the audit path is shorter than the tree is deep");
  return r;
}

/** The running ledger head after a batch; `firstSeq` may be a number, bigint or decimal text. */
export function nextHead(previousHead, root, firstSeq, count) {
  return sha256(concat(previousHead, root, uintBytes(firstSeq, 8), uintBytes(count, 4)));
}

/** HMAC-SHA256(customer key, canonical content bytes): the commitment in a leaf input. */
export async function commitment(key, content) {
  if (key.length !== 32) throw new FormatError(`a customer key is 32 bytes, got ${key.length}`);
  const subtle = globalThis.crypto.subtle;
  const hmacKey = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  return new Uint8Array(await subtle.sign("HMAC", hmacKey, content));
}

/** The 74-byte leaf input: {version, seq (bigint), kind, commitment, previousLeafHash}. */
export function decodeLeafInput(data) {
  if (data.length !== LEAF_INPUT_SIZE) {
    throw new FormatError(`a leaf input is ${LEAF_INPUT_SIZE} bytes, got ${data.length}`);
  }
  if (data[0] !== FORMAT_VERSION) {
    throw new FormatError(`unknown leaf format version ${data[0]}; this verifier reads 1`);
  }
  if (!(data[9] in KINDS)) throw new FormatError(`unknown record kind ${data[9]}`);
  let seq = 0n;
  for (const byte of data.slice(1, 9)) seq = (seq << 8n) | BigInt(byte);
  return {
    version: data[0],
    seq,
    kind: KINDS[data[9]],
    commitment: data.slice(10, 42),
    previousLeafHash: data.slice(42, 74),
  };
}

// Receipts --------------------------------------------------------------------------------

function object(field, value, keys) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new FormatError(`${field} must be a JSON object`);
  }
  for (const key of keys) if (!(key in value)) throw new FormatError(`${field}.${key} is missing`);
  const unknown = Object.keys(value).filter((key) => !keys.includes(key)).sort();
  if (unknown.length) throw new FormatError(`${field} has unknown field '${unknown[0]}'`);
  return value;
}

function uint(field, value, maxBits) {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw new FormatError(`${field} must be a non-negative integer`);
  }
  if (!Number.isSafeInteger(value)) {
    throw new FormatError(`${field} is beyond 2^53 - 1, more than this verifier reads exactly`);
  }
  if (maxBits < 53 && value >= 2 ** maxBits) {
    throw new FormatError(`${field} does not fit in ${maxBits} bits`);
  }
  return value;
}

function address(field, value) {
  hexToBytes(field, value, 20);
  return value;
}

/** Parse and validate a receipt object; throws FormatError naming the first bad field. */
export function parseReceipt(obj) {
  const r = object("receipt", obj, RECEIPT_FIELDS);
  if (r.format !== RECEIPT_FORMAT) {
    throw new FormatError(`receipt.format must be '${RECEIPT_FORMAT}'`);
  }
  if (typeof r.record_id !== "string" || !r.record_id) {
    throw new FormatError("receipt.record_id must be a non-empty string");
  }
  if (!Array.isArray(r.audit_path)) throw new FormatError("receipt.audit_path must be an array");
  if (r.audit_path.length > MAX_AUDIT_PATH) {
    throw new FormatError(`receipt.audit_path has ${r.audit_path.length} hashes, over 32`);
  }
  const b = object("receipt.batch", r.batch, BATCH_FIELDS);
  const c = object("receipt.chain", r.chain, CHAIN_FIELDS);
  return {
    recordId: r.record_id,
    seq: uint("receipt.seq", r.seq, 64),
    leafInput: hexToBytes("receipt.leaf_input", r.leaf_input, LEAF_INPUT_SIZE),
    leafHash: hexToBytes("receipt.leaf_hash", r.leaf_hash, HASH_SIZE),
    leafIndex: uint("receipt.leaf_index", r.leaf_index, 32),
    treeSize: uint("receipt.tree_size", r.tree_size, 32),
    auditPath: r.audit_path.map((h, i) => hexToBytes(`receipt.audit_path[${i}]`, h, HASH_SIZE)),
    batch: parseBatch("receipt.batch", b),
    chain: parseChain("receipt.chain", c),
  };
}

function parseBatch(field, b) {
  return {
    id: uint(`${field}.id`, b.id, 256),
    firstSeq: uint(`${field}.first_seq`, b.first_seq, 64),
    count: uint(`${field}.count`, b.count, 32),
    root: hexToBytes(`${field}.root`, b.root, HASH_SIZE),
    previousHead: hexToBytes(`${field}.previous_head`, b.previous_head, HASH_SIZE),
    head: hexToBytes(`${field}.head`, b.head, HASH_SIZE),
  };
}

function parseChain(field, c) {
  return {
    chainId: uint(`${field}.chain_id`, c.chain_id, 256),
    contract: address(`${field}.contract`, c.contract),
    epoch: uint(`${field}.epoch`, c.epoch, 64),
    txHash: hexToBytes(`${field}.tx_hash`, c.tx_hash, HASH_SIZE),
    blockNumber: uint(`${field}.block_number`, c.block_number, 64),
    blockHash: hexToBytes(`${field}.block_hash`, c.block_hash, HASH_SIZE),
  };
}

function step(name, ok, detail, expected = undefined, found = undefined) {
  return { name, status: ok ? "ok" : "failed", detail, expected, found };
}

/**
 * Everything a parsed receipt proves by arithmetic alone, one step each, in the Python
 * verifier's order: leaf_input, leaf_hash, position, inclusion, head. A failed step does not
 * stop the others.
 */
export async function checkReceipt(receipt) {
  const steps = [];
  let decoded = null;
  try {
    decoded = decodeLeafInput(receipt.leafInput);
  } catch (error) {
    steps.push(step("leaf_input", false, error.message));
  }
  if (decoded) {
    const ok = decoded.seq === BigInt(receipt.seq);
    steps.push(
      step(
        "leaf_input",
        ok,
        ok
          ? `format version ${decoded.version}, seq ${decoded.seq}, kind ${decoded.kind}`
          : "the seq inside the leaf input is not the receipt's",
        `seq ${receipt.seq}`,
        `seq ${decoded.seq}`,
      ),
    );
  }
  const computedLeaf = await leafHash(receipt.leafInput);
  steps.push(
    step(
      "leaf_hash",
      equal(computedLeaf, receipt.leafHash),
      "SHA-256(0x00 ‖ leaf_input)",
      bytesToHex(receipt.leafHash),
      bytesToHex(computedLeaf),
    ),
  );
  const b = receipt.batch;
  const problems = [];
  if (receipt.leafIndex !== receipt.seq - b.firstSeq) {
    problems.push(`leaf_index ${receipt.leafIndex} is not seq - first_seq = ${receipt.seq - b.firstSeq}`);
  }
  if (receipt.treeSize !== b.count) {
    problems.push(`tree_size ${receipt.treeSize} is not the batch count ${b.count}`);
  }
  if (receipt.leafIndex >= receipt.treeSize) {
    problems.push(`leaf_index ${receipt.leafIndex} is outside a tree of ${receipt.treeSize}`);
  }
  steps.push(
    step(
      "position",
      problems.length === 0,
      problems.length ? problems.join("; ") : `seq ${receipt.seq} is leaf ${receipt.leafIndex} of ${b.count}`,
      `leaf ${receipt.seq - b.firstSeq} of ${b.count}`,
      `leaf ${receipt.leafIndex} of ${receipt.treeSize}`,
    ),
  );
  try {
    const root = await rootFromInclusionProof(
      receipt.leafIndex,
      receipt.treeSize,
      computedLeaf,
      receipt.auditPath,
    );
    steps.push(
      step(
        "inclusion",
        equal(root, b.root),
        `the RFC 9162 audit path of ${receipt.auditPath.length} hashes`,
        bytesToHex(b.root),
        bytesToHex(root),
      ),
    );
  } catch (error) {
    steps.push(step("inclusion", false, error.message, bytesToHex(b.root), "no root"));
  }
  const head = await nextHead(b.previousHead, b.root, b.firstSeq, b.count);
  steps.push(
    step(
      "head",
      equal(head, b.head),
      "SHA-256(previous_head ‖ root ‖ first_seq ‖ count)",
      bytesToHex(b.head),
      bytesToHex(head),
    ),
  );
  return steps;
}

// The chain -------------------------------------------------------------------------------

/** A minimal JSON-RPC 2.0 client over fetch. */
export class RpcClient {
  constructor(url, { fetchImpl = globalThis.fetch, timeoutMs = 10000 } = {}) {
    this.url = url;
    // Called as a plain function: `window.fetch` refuses to run with another `this`.
    this.post = (...args) => fetchImpl(...args);
    this.timeoutMs = timeoutMs;
    this.nextId = 1;
  }

  /** The result of `method(params)`; throws RpcError (with `.code` for a node's error). */
  async call(method, params) {
    let response;
    try {
      response = await this.post(this.url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: this.nextId++, method, params }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (error) {
      throw new RpcError(`cannot reach the JSON-RPC node at ${this.url}: ${error.message}`);
    }
    if (!response.ok) throw new RpcError(`the node answered HTTP ${response.status} to ${method}`);
    const body = await response.json();
    if (body.error) {
      const error = new RpcError(`${method}: ${body.error.message || "error"}`);
      error.code = body.error.code;
      throw error;
    }
    return body.result;
  }
}

function word(data, i) {
  return data.slice(2 + 64 * i, 2 + 64 * (i + 1));
}

function wordNumber(data, i) {
  return BigInt("0x" + word(data, i));
}

/**
 * The on-chain steps for one batch: network, root_on_chain, transaction (block and the
 * emitted BatchAnchored fields, head included) and block (still canonical). `contract` is the
 * address the auditor trusts (default: the receipt's own). Throws RpcError when the node
 * cannot be reached at all.
 */
export async function checkOnChain(batch, chain, { rpc, contract = null }) {
  const steps = [];
  const pinned = (contract || chain.contract).toLowerCase();
  const chainId = Number(BigInt(await rpc.call("eth_chainId", [])));
  const code = await rpc.call("eth_getCode", [pinned, "latest"]);
  const networkProblems = [];
  if (chainId !== chain.chainId) networkProblems.push(`the node is chain ${chainId}`);
  if (pinned !== chain.contract.toLowerCase()) {
    networkProblems.push(`the receipt names contract ${chain.contract}, not ${pinned}`);
  }
  if (!code || code === "0x") networkProblems.push(`no contract code at ${pinned}`);
  steps.push(
    step(
      "network",
      networkProblems.length === 0,
      networkProblems.length ? networkProblems.join("; ") : `chain ${chainId}, contract ${pinned}`,
      `chain ${chain.chainId}, contract ${chain.contract}`,
      `chain ${chainId}, contract ${pinned}`,
    ),
  );

  const claimed = `(${batch.firstSeq}, ${batch.count}, ${bytesToHex(batch.root)})`;
  try {
    const data = await rpc.call("eth_call", [
      { to: pinned, data: BATCH_SELECTOR + BigInt(batch.id).toString(16).padStart(64, "0") },
      "latest",
    ]);
    const found =
      typeof data === "string" && data.length >= 2 + 64 * 3
        ? `(${wordNumber(data, 0)}, ${wordNumber(data, 1)}, 0x${word(data, 2)})`
        : `an answer of ${String(data).length} characters, not a batch`;
    steps.push(step("root_on_chain", found === claimed, `batch(${batch.id}) on chain`, claimed, found));
  } catch (error) {
    if (!(error instanceof RpcError) || error.code === undefined) throw error;
    steps.push(
      step("root_on_chain", false, `the contract holds no batch ${batch.id}`, claimed, error.message),
    );
  }

  const txHash = bytesToHex(chain.txHash);
  const mined = await rpc.call("eth_getTransactionReceipt", [txHash]);
  const claimedEvent =
    `block ${chain.blockNumber} ${bytesToHex(chain.blockHash)}; BatchAnchored(${batch.id}, ` +
    `${batch.firstSeq}, ${batch.count}, ${bytesToHex(batch.root)}, head ${bytesToHex(batch.head)})`;
  if (!mined) {
    steps.push(
      step("transaction", false, `the chain has no transaction ${txHash} (never mined, or rolled back)`,
        claimedEvent, "no transaction"),
    );
  } else {
    const log = (mined.logs || []).find(
      (entry) =>
        entry.address.toLowerCase() === pinned &&
        entry.topics[0] === BATCH_ANCHORED_TOPIC &&
        BigInt(entry.topics[1]) === BigInt(batch.id),
    );
    const where = `block ${Number(BigInt(mined.blockNumber))} ${mined.blockHash}`;
    const emitted = log
      ? `BatchAnchored(${BigInt(log.topics[1])}, ${wordNumber(log.data, 0)}, ` +
        `${wordNumber(log.data, 1)}, 0x${word(log.data, 2)}, head 0x${word(log.data, 3)})`
      : `no BatchAnchored(${batch.id}) from ${pinned}`;
    const found = `${where}; ${emitted}`;
    steps.push(step("transaction", found === claimedEvent, `transaction ${txHash}`, claimedEvent, found));
  }

  const block = await rpc.call("eth_getBlockByNumber", [
    "0x" + chain.blockNumber.toString(16),
    false,
  ]);
  const canonical = block ? block.hash : "no block";
  steps.push(
    step(
      "block",
      canonical === bytesToHex(chain.blockHash),
      `block ${chain.blockNumber} on the canonical chain`,
      bytesToHex(chain.blockHash),
      canonical,
    ),
  );
  return steps;
}

/**
 * Verify a receipt object end to end: parse, arithmetic steps, then the chain's steps when
 * `rpcUrl` is given. Returns {ok, steps}; a receipt that does not parse is one failed step.
 */
export async function verifyReceipt(obj, { rpcUrl = null, contract = null, fetchImpl } = {}) {
  let receipt;
  try {
    receipt = parseReceipt(obj);
  } catch (error) {
    if (!(error instanceof FormatError)) throw error;
    return { ok: false, steps: [step("format", false, error.message)] };
  }
  const steps = [step("format", true, `${RECEIPT_FORMAT}, record ${receipt.recordId}`)];
  steps.push(...(await checkReceipt(receipt)));
  if (rpcUrl) {
    try {
      const rpc = new RpcClient(rpcUrl, fetchImpl ? { fetchImpl } : {});
      steps.push(...(await checkOnChain(receipt.batch, receipt.chain, { rpc, contract })));
    } catch (error) {
      steps.push({ name: "chain", status: "failed", detail: error.message });
    }
  } else {
    steps.push({ name: "chain", status: "skipped", detail: "no JSON-RPC URL given" });
  }
  return { ok: steps.every((s) => s.status !== "failed"), steps };
}

// Bundles ---------------------------------------------------------------------------------

const MAX_LISTED = 20;

/**
 * Verify an export bundle (JSON Lines text, format crm-ledger/bundle/v1): every record's leaf,
 * inclusion (audit path, or the rebuilt root of a complete batch), commitment when the key is
 * in the bundle, each customer's hash chain, every batch's head and their chaining, and each
 * batch on chain when `rpcUrl` is given. Returns {ok, steps, records, batches}.
 */
export async function verifyBundle(text, { rpcUrl = null, contract = null, fetchImpl } = {}) {
  const lines = text.split("\n").filter((line) => line.trim());
  const fail = (detail) => ({ ok: false, steps: [step("format", false, detail)], records: 0, batches: 0 });
  let header;
  const batches = new Map();
  const keys = new Map();
  const records = [];
  try {
    header = JSON.parse(lines[0] || "null");
    if (!header || header.format !== BUNDLE_FORMAT) {
      return fail(`line 1 must be a ${BUNDLE_FORMAT} header`);
    }
    for (let i = 1; i < lines.length; i++) {
      const obj = JSON.parse(lines[i]);
      const where = `line ${i + 1}`;
      if (obj.type === "batch") {
        batches.set(obj.batch.id, {
          batch: parseBatch(`${where}.batch`, object(`${where}.batch`, obj.batch, BATCH_FIELDS)),
          chain: parseChain(`${where}.chain`, object(`${where}.chain`, obj.chain, CHAIN_FIELDS)),
          complete: obj.complete === true,
          leaves: [],
        });
      } else if (obj.type === "key") {
        keys.set(obj.customer_id, hexToBytes(`${where}.key`, obj.key, 32));
      } else if (obj.type === "record") {
        records.push({
          where,
          seq: uint(`${where}.seq`, obj.seq, 64),
          customerId: obj.customer_id,
          content: obj.content,
          leafInput: hexToBytes(`${where}.leaf_input`, obj.leaf_input, LEAF_INPUT_SIZE),
          auditPath:
            obj.audit_path === null
              ? null
              : obj.audit_path.map((h, j) => hexToBytes(`${where}.audit_path[${j}]`, h, HASH_SIZE)),
        });
      } else {
        return fail(`${where} has unknown type ${JSON.stringify(obj.type)}`);
      }
    }
  } catch (error) {
    return fail(error.message);
  }

  const counts = header.counts || {};
  const found = { batches: batches.size, keys: keys.size, records: records.length };
  const miscounted = Object.keys(found).filter((name) => counts[name] !== found[name]);
  if (miscounted.length) {
    return fail(
      `the header counts ${miscounted.map((n) => `${counts[n]} ${n}`).join(", ")}; the bundle ` +
        `holds ${miscounted.map((n) => `${found[n]} ${n}`).join(", ")} (truncated or padded)`,
    );
  }
  const ordered = [...batches.values()].sort((a, b) => a.batch.firstSeq - b.batch.firstSeq);
  const batchOf = (seq) =>
    ordered.find((b) => seq >= b.batch.firstSeq && seq < b.batch.firstSeq + b.batch.count);
  const recordFailures = [];
  const lastLeaf = new Map();
  const encoder = new TextEncoder();
  for (const record of records) {
    const problems = [];
    let decoded = null;
    try {
      decoded = decodeLeafInput(record.leafInput);
      if (decoded.seq !== BigInt(record.seq)) problems.push("its leaf input has another seq");
    } catch (error) {
      problems.push(error.message);
    }
    const leaf = await leafHash(record.leafInput);
    const owner = batchOf(record.seq);
    if (!owner) {
      problems.push("no batch in the bundle holds its seq");
    } else if (owner.complete) {
      owner.leaves.push(leaf);
    } else {
      try {
        const root = await rootFromInclusionProof(
          record.seq - owner.batch.firstSeq, owner.batch.count, leaf, record.auditPath || []);
        if (!equal(root, owner.batch.root)) problems.push("its audit path does not lead to the batch root");
      } catch (error) {
        problems.push(error.message);
      }
    }
    const key = keys.get(record.customerId);
    if (decoded && key && record.content !== null) {
      const made = await commitment(key, encoder.encode(record.content));
      if (!equal(made, decoded.commitment)) problems.push("HMAC-SHA256(key, content) is not its commitment");
    }
    if (decoded && record.customerId !== null) {
      const previous = lastLeaf.get(record.customerId);
      if (previous && !equal(previous, decoded.previousLeafHash)) {
        problems.push("it does not link to the customer's previous record");
      }
      lastLeaf.set(record.customerId, leaf);
    }
    if (problems.length) recordFailures.push(`seq ${record.seq} (${record.where}): ${problems.join("; ")}`);
  }
  const steps = [
    step("format", true, `${BUNDLE_FORMAT}: ${records.length} records, ${batches.size} batches`),
    step(
      "records",
      recordFailures.length === 0,
      recordFailures.length
        ? recordFailures.slice(0, MAX_LISTED).join(" | ")
        : "every leaf, audit path, commitment and customer link holds",
      `${records.length} records verify`,
      `${records.length - recordFailures.length} verify`,
    ),
  ];
  const batchFailures = [];
  const scope = header.scope || {};
  if (scope.kind === "range") {
    const expected = scope.to_seq - scope.from_seq + 1;
    const inside = new Set(records.filter((r) => r.seq >= scope.from_seq && r.seq <= scope.to_seq).map((r) => r.seq));
    if (inside.size !== expected || records.length !== expected) {
      batchFailures.push(
        `the bundle covers seqs ${scope.from_seq} to ${scope.to_seq} but holds ` +
          `${records.length} records, not ${expected}`,
      );
    }
  }
  if (scope.kind === "all" && ordered.some((entry) => !entry.complete)) {
    batchFailures.push("the bundle claims the whole ledger but some batches are incomplete");
  }
  let previous = null;
  for (const entry of ordered) {
    const b = entry.batch;
    if (entry.complete) {
      const root = await merkleRoot(entry.leaves);
      if (entry.leaves.length !== b.count || !equal(root, b.root)) {
        batchFailures.push(`batch ${b.id}: its records rebuild root ${bytesToHex(root)}, not ${bytesToHex(b.root)}`);
      }
    }
    if (!equal(await nextHead(b.previousHead, b.root, b.firstSeq, b.count), b.head)) {
      batchFailures.push(`batch ${b.id}: the head is not SHA-256(previous_head ‖ root ‖ first_seq ‖ count)`);
    }
    if (previous && previous.batch.id + 1 === b.id && !equal(previous.batch.head, b.previousHead)) {
      batchFailures.push(`batch ${b.id}: its previous head is not batch ${previous.batch.id}'s head`);
    }
    previous = entry;
  }
  steps.push(
    step(
      "batches",
      batchFailures.length === 0,
      batchFailures.length ? batchFailures.slice(0, MAX_LISTED).join(" | ") : "every root and head holds and the heads chain",
      `${batches.size} batches verify`,
      `${batches.size - batchFailures.length} verify`,
    ),
  );
  if (rpcUrl) {
    const rpc = new RpcClient(rpcUrl, fetchImpl ? { fetchImpl } : {});
    const chainFailures = [];
    const failedBatches = new Set();
    try {
      for (const entry of ordered) {
        for (const s of await checkOnChain(entry.batch, entry.chain, { rpc, contract })) {
          if (s.status !== "failed") continue;
          failedBatches.add(entry.batch.id);
          chainFailures.push(`batch ${entry.batch.id} ${s.name}: expected ${s.expected}, found ${s.found}`);
        }
      }
      steps.push(
        step(
          "chain",
          chainFailures.length === 0,
          chainFailures.length
            ? chainFailures.slice(0, MAX_LISTED).join(" | ")
            : "every batch is on chain where the bundle says",
          `${batches.size} batches on chain`,
          `${batches.size - failedBatches.size} on chain`,
        ),
      );
    } catch (error) {
      steps.push(step("chain", false, error.message));
    }
  } else {
    steps.push({ name: "chain", status: "skipped", detail: "no JSON-RPC URL given" });
  }
  return {
    ok: steps.every((s) => s.status !== "failed"),
    steps,
    records: records.length,
    batches: batches.size,
  };
}
