// Hardhat dev node for crm-ledger: same chain id (31337) and dev mnemonic as Anvil.
// Contracts are compiled by scripts/compile_contracts.py (solc-js), not by Hardhat.
module.exports = {
  networks: {
    hardhat: {
      chainId: 31337,
      accounts: { mnemonic: "test test test test test test test test test test test junk" },
      hardfork: "cancun",
    },
  },
};
