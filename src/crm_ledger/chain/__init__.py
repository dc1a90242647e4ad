"""The EVM side: local nodes, the signing key, the AuditLedger client and its deployments.

Modules: `node` (Anvil/Hardhat child processes), `signer` (the anchorer's key), `client`
(`LedgerChain`, the async JSON-RPC client), `deploy` (recorded, checked deployments and epoch
recovery), `artifacts` (compiled contracts, generated).
"""
