"""The EVM side: local nodes, the signing key, the AuditLedger client and its deployments.

Modules: `node` (Anvil/Hardhat child processes), `signer` (the anchorer's key), `rpc` (`RpcNode`,
the JSON-RPC transport and error messages every chain reader shares, the indexer's included),
`contract` (`ContractClient`, the chain facts, views and signing every contract client shares),
`client` (`LedgerChain`, the AuditLedger client), `deploy` (recorded, checked deployments and
epoch recovery), `artifacts` (compiled contracts, generated).
"""
