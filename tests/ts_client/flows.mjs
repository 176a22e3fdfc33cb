// The operations flows of Hindsight's "Operations" documentation page, with
// Hindsight's own TypeScript client (@vectorize-io/hindsight-client 0.9.1),
// reading the list as the page's examples do: `response.data.items`.
//
//   node flows.mjs BASE_URL API_KEY BANK submit FINISHED_OPERATION_ID
//       retain async, list the pending ones and cancel them all, retry one,
//       delete a finished operation (then 404), a wrong key (401)
//   node flows.mjs BASE_URL API_KEY BANK poll OPERATION_ID
//       poll one operation until it has finished
//
// Prints one JSON object of what it saw; exits non-zero on an unexpected error.
import { HindsightClient, HindsightError, sdk, createClient, createConfig } from "@vectorize-io/hindsight-client";

const [baseUrl, apiKey, bank, mode, operationId] = process.argv.slice(2);
const client = new HindsightClient({ baseUrl, apiKey });
const raw = createClient(createConfig({ baseUrl, headers: { Authorization: `Bearer ${apiKey}` } }));
const path = (id) => ({ bank_id: bank, operation_id: id });
const seen = {};

if (mode === "submit") {
  // Retain in the background: the answer names the operation.
  const queued = await client.retainBatch(
    bank,
    [{ content: "Ada Lovelace wrote the first program." }, { content: "Charles Babbage designed the engine." }],
    { async: true },
  );
  seen.queued = { async: queued.async, operationId: queued.operation_id, itemsCount: queued.items_count };

  // Cancel every pending operation of the bank, as listed.
  const pending = await sdk.listOperations({ client: raw, path: { bank_id: bank }, query: { status: "pending" } });
  seen.pendingIds = pending.data.items.map((op) => op.id);
  for (const op of pending.data.items) {
    await sdk.cancelOperation({ client: raw, path: path(op.id) });
  }
  seen.afterCancel = (await sdk.getOperationStatus({ client: raw, path: path(queued.operation_id) })).data.status;

  // Retry the cancelled retain.
  seen.retried = (await sdk.retryOperation({ client: raw, path: path(queued.operation_id) })).data.status;

  // Delete a finished operation; then it is a 404.
  seen.deleted = (await sdk.deleteOperation({ client: raw, path: path(operationId) })).data.success;
  seen.goneStatus = (await sdk.getOperationStatus({ client: raw, path: path(operationId) })).response.status;

  // Every operation left, by the list's items.
  const all = await sdk.listOperations({ client: raw, path: { bank_id: bank } });
  seen.items = all.data.items.map((op) => [op.id, op.status]);
  seen.itemsMatchOperations = JSON.stringify(all.data.items) === JSON.stringify(all.data.operations);

  // A wrong key is a 401, through the high-level client too.
  try {
    await new HindsightClient({ baseUrl, apiKey: "ops_not-a-key" }).retainBatch(bank, [{ content: "x" }], { async: true });
    seen.badKey = "accepted";
  } catch (error) {
    seen.badKey = error instanceof HindsightError ? error.statusCode : String(error);
  }
} else if (mode === "poll") {
  let status = null;
  for (let i = 0; i < 1200; i++) {
    status = (await sdk.getOperationStatus({ client: raw, path: path(operationId) })).data.status;
    if (["completed", "failed", "cancelled"].includes(status)) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  seen.finalStatus = status;
} else {
  throw new Error(`unknown mode ${mode}`);
}
console.log(JSON.stringify(seen));
