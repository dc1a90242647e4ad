"""Commerce ingest: Shopify, WooCommerce and Magento webhooks into the ledger.

A shop is a *source* (`sources`) with its own webhook URL and secret (encrypted at rest,
`secrets`). A delivery is verified by the platform's own signature over the raw body
(`signatures`), stored in the durable inbox before the 200 (`inbox`), and mapped afterwards by
the ingest worker (`worker`): the platform's payload becomes a platform-neutral event
(`payloads`), which `apply` turns into customers and order records; `clawback` takes back the
loyalty points of refunded or cancelled orders; `backfill` imports orders from a file.
"""
