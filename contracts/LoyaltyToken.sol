// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title LoyaltyToken
/// @notice Loyalty points of crm-ledger: an ERC-20 of whole points (0 decimals) that holders cannot
/// transfer to each other unless the admin enables transfers. Issuers mint points in batches
/// against per-campaign budgets; the service, which holds the holders' points in custody, burns
/// them when they are redeemed or expire. Every issuance and every burn carries a 32-byte id that
/// works once, so a retried transaction never mints or burns twice.
/// @dev Id scheme. Ids are opaque 32-byte values and the contract accepts any; how callers derive
/// them only changes the gas. Issuance ids and burn ids (redeem and expire share one space) are
/// two separate spaces, each global across campaigns. The used flag of id `x` is bit
/// `uint256(x) & 0xff` of storage word `uint256(x) >> 8`: the 256 ids that differ only in their
/// last byte share one word. Creating a word costs 22,100 gas, as much as the new holder's
/// balance, while setting a bit in a word `issueBatch` already holds costs almost nothing, so
/// callers should derive ids that share words and send them in order. crm-ledger derives
/// id = 28-byte award prefix ‖ 4-byte big-endian index of the recipient in the award (0, 1, ...),
/// so recipients 0..255 of an award share a word, 256..511 the next, and so on. Ids that share
/// no word still work, at one new word each.
contract LoyaltyToken is ERC20, AccessControl {
    /// @notice Role allowed to issue points (`issueBatch`).
    bytes32 public constant ISSUER_ROLE = keccak256("ISSUER_ROLE");

    /// @notice Role allowed to burn a holder's points as a redemption (`redeem`).
    bytes32 public constant REDEEMER_ROLE = keccak256("REDEEMER_ROLE");

    /// @notice Role allowed to burn a holder's expired points (`expire`, `expireBatch`).
    bytes32 public constant EXPIRER_ROLE = keccak256("EXPIRER_ROLE");

    /// @dev Points a campaign may issue in total, and points it has issued so far.
    struct Campaign {
        uint256 budget;
        uint256 issued;
    }

    /// @dev One word of used-id flags, held in memory while `issueBatch` works through ids that
    /// share it and written back once: a storage read and write per id would add ~400 gas to
    /// every new holder.
    struct UsedWordCache {
        uint256 index;
        uint256 bits;
    }

    /// @dev `UsedWordCache.index` of a cache that holds no word yet; word indexes are < 2**248.
    uint256 private constant NO_WORD = type(uint256).max;

    bool private _transfersEnabled;
    mapping(bytes32 campaign => Campaign) private _campaigns;
    mapping(uint256 wordIndex => uint256 usedBits) private _usedIssuanceIds;
    mapping(uint256 wordIndex => uint256 usedBits) private _usedBurnIds;

    /// @notice The admin enabled or disabled transfers between holders.
    /// @param enabled True when holders may now transfer points to each other.
    event TransfersEnabledSet(bool enabled);

    /// @notice The admin set the total number of points `campaign` may issue.
    /// @param campaign Opaque campaign id.
    /// @param budget The campaign's new total budget, including points already issued.
    event CampaignBudgetSet(bytes32 indexed campaign, uint256 budget);

    /// @notice `amount` points were minted to `to` under issuance id `id` of `campaign`.
    /// @param campaign Opaque campaign id whose budget the points count against.
    /// @param id Issuance id, now used.
    /// @param to Holder that received the points.
    /// @param amount Points minted.
    event Issued(bytes32 indexed campaign, bytes32 indexed id, address indexed to, uint256 amount);

    /// @notice `amount` of `from`'s points were burnt as redemption `id`.
    /// @param id Burn id, now used.
    /// @param from Holder whose points were burnt.
    /// @param amount Points burnt.
    /// @param ref Opaque reference of what the points were redeemed for.
    event Redeemed(bytes32 indexed id, address indexed from, uint256 amount, bytes32 ref);

    /// @notice `amount` of `from`'s points expired and were burnt under burn id `id`.
    /// @param id Burn id, now used.
    /// @param from Holder whose points were burnt.
    /// @param amount Points burnt.
    /// @param reason Opaque reason code of the expiry.
    event Expired(bytes32 indexed id, address indexed from, uint256 amount, bytes32 reason);

    /// @notice Transfers between holders are disabled; only minting and burning work.
    error LoyaltyTokenTransfersDisabled();

    /// @notice A campaign's budget cannot be set below the points it has already issued.
    /// @param campaign Opaque campaign id.
    /// @param issued Points the campaign has issued.
    /// @param budget The rejected budget.
    error LoyaltyTokenBudgetBelowIssued(bytes32 campaign, uint256 issued, uint256 budget);

    /// @notice The new issuances of a batch add up to more than the campaign's remaining budget.
    /// @param campaign Opaque campaign id.
    /// @param remaining Points the campaign could still issue before the batch.
    /// @param requested Sum of the batch's new (not yet used) issuances.
    error LoyaltyTokenBudgetExceeded(bytes32 campaign, uint256 remaining, uint256 requested);

    /// @notice The id, holder and amount arrays of a batch differ in length.
    error LoyaltyTokenLengthMismatch();

    /// @notice An issuance or burn of zero points.
    /// @param id Id of the offending entry.
    error LoyaltyTokenZeroAmount(bytes32 id);

    /// @notice An issuance to, or a burn from, the zero address.
    /// @param id Id of the offending entry.
    error LoyaltyTokenZeroAddress(bytes32 id);

    /// @notice The burn id has been used before.
    /// @param id The used burn id.
    error LoyaltyTokenIdUsed(bytes32 id);

    /// @notice Creates the token with transfers between holders disabled and no campaign budgets.
    /// @param name ERC-20 name.
    /// @param symbol ERC-20 symbol.
    /// @param admin Account granted DEFAULT_ADMIN_ROLE (manages roles, budgets and transfers).
    constructor(string memory name, string memory symbol, address admin) ERC20(name, symbol) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Points are whole: balances are plain counts.
    /// @return Always 0.
    function decimals() public pure override returns (uint8) {
        return 0;
    }

    /// @notice Enables or disables transfers between holders; minting and burning always work.
    /// @param enabled True to let holders transfer points to each other.
    function setTransfersEnabled(bool enabled) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTransfersEnabled(enabled);
    }

    /// @notice Sets the total number of points `campaign` may ever issue.
    /// @dev Reverts with LoyaltyTokenBudgetBelowIssued when `budget` is below `campaignIssued`.
    /// @param campaign Opaque campaign id.
    /// @param budget New total budget, counting points already issued.
    function setCampaignBudget(bytes32 campaign, uint256 budget) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setCampaignBudget(campaign, budget);
    }

    /// @notice Mints `amounts[i]` points to `to[i]` under issuance id `ids[i]`, skipping ids already
    /// used, so that a retried or partly overlapping batch mints each id at most once.
    /// @dev A skipped id emits nothing; `issued(id)` tells whether an id has been used. Entries are
    /// validated whether or not their id is used: reverts with LoyaltyTokenLengthMismatch,
    /// LoyaltyTokenZeroAmount or LoyaltyTokenZeroAddress. Reverts as a whole with
    /// LoyaltyTokenBudgetExceeded when the new issuances add up to more than
    /// `campaignRemaining(campaign)` (0 for a campaign whose budget was never set). An id repeated
    /// within the batch is issued once, at its first position. See the contract's id scheme: ids
    /// that share storage words make issuance cheaper. The budget is checked after the mints, so
    /// a batch over budget spends nearly all its gas before it reverts: check
    /// `campaignRemaining` first.
    /// @param campaign Opaque campaign id whose budget the points count against.
    /// @param ids Issuance ids, one per entry.
    /// @param to Holders, one per entry.
    /// @param amounts Points, one per entry; each must be positive.
    /// @return issuedCount Number of entries minted (those whose id was not used before).
    function issueBatch(
        bytes32 campaign,
        bytes32[] calldata ids,
        address[] calldata to,
        uint256[] calldata amounts
    ) external onlyRole(ISSUER_ROLE) returns (uint256 issuedCount) {
        return _issueBatch(campaign, ids, to, amounts);
    }

    /// @notice Burns `amount` of `from`'s points as redemption `id` (no allowance needed: the
    /// service holds the points in custody).
    /// @dev Reverts with LoyaltyTokenIdUsed when `id` has been used by any redeem or expire, with
    /// LoyaltyTokenZeroAmount, LoyaltyTokenZeroAddress, and with OpenZeppelin's
    /// ERC20InsufficientBalance when `from` holds fewer than `amount` points.
    /// @param id Burn id; works once.
    /// @param from Holder whose points are burnt.
    /// @param amount Points to burn; must be positive.
    /// @param ref Opaque reference of what the points are redeemed for.
    function redeem(bytes32 id, address from, uint256 amount, bytes32 ref) external onlyRole(REDEEMER_ROLE) {
        _redeem(id, from, amount, ref);
    }

    /// @notice Burns `amount` of `from`'s expired points under burn id `id`.
    /// @dev Reverts like `redeem`, including LoyaltyTokenIdUsed for a used id.
    /// @param id Burn id; works once.
    /// @param from Holder whose points are burnt.
    /// @param amount Points to burn; must be positive.
    /// @param reason Opaque reason code of the expiry.
    function expire(bytes32 id, address from, uint256 amount, bytes32 reason) external onlyRole(EXPIRER_ROLE) {
        if (!_expire(id, from, amount, reason)) revert LoyaltyTokenIdUsed(id);
    }

    /// @notice Burns `amounts[i]` of `from[i]`'s expired points under burn id `ids[i]`, skipping ids
    /// already used, so that a retried batch burns each id at most once.
    /// @dev A skipped id emits nothing. Entries are validated whether or not their id is used;
    /// reverts as a whole with LoyaltyTokenLengthMismatch, LoyaltyTokenZeroAmount,
    /// LoyaltyTokenZeroAddress or ERC20InsufficientBalance.
    /// @param ids Burn ids, one per entry.
    /// @param from Holders, one per entry.
    /// @param amounts Points to burn, one per entry; each must be positive.
    /// @param reason Opaque reason code shared by the whole batch.
    /// @return expiredCount Number of entries burnt (those whose id was not used before).
    function expireBatch(
        bytes32[] calldata ids,
        address[] calldata from,
        uint256[] calldata amounts,
        bytes32 reason
    ) external onlyRole(EXPIRER_ROLE) returns (uint256 expiredCount) {
        return _expireBatch(ids, from, amounts, reason);
    }

    /// @notice Whether holders may transfer points to each other.
    /// @return True when transfers between holders are enabled.
    function transfersEnabled() external view returns (bool) {
        return _transfersEnabled;
    }

    /// @notice The total number of points `campaign` may ever issue (0 until the admin sets it).
    /// @param campaign Opaque campaign id.
    /// @return The campaign's budget.
    function campaignBudget(bytes32 campaign) external view returns (uint256) {
        return _campaigns[campaign].budget;
    }

    /// @notice The number of points `campaign` has issued (redeemed and expired points included).
    /// @param campaign Opaque campaign id.
    /// @return Points issued under the campaign.
    function campaignIssued(bytes32 campaign) external view returns (uint256) {
        return _campaigns[campaign].issued;
    }

    /// @notice The number of points `campaign` may still issue.
    /// @param campaign Opaque campaign id.
    /// @return Budget minus points issued.
    function campaignRemaining(bytes32 campaign) external view returns (uint256) {
        Campaign storage stored = _campaigns[campaign];
        return stored.budget - stored.issued;
    }

    /// @notice Whether issuance id `id` has been used.
    /// @param id Issuance id.
    /// @return True when `issueBatch` has minted under `id`.
    function issued(bytes32 id) external view returns (bool) {
        return _isUsed(_usedIssuanceIds, id);
    }

    /// @notice Whether burn id `id` has been used by `redeem`, `expire` or `expireBatch`.
    /// @param id Burn id.
    /// @return True when points have been burnt under `id`.
    function burned(bytes32 id) external view returns (bool) {
        return _isUsed(_usedBurnIds, id);
    }

    function _setTransfersEnabled(bool enabled) internal {
        _transfersEnabled = enabled;
        emit TransfersEnabledSet(enabled);
    }

    function _setCampaignBudget(bytes32 campaign, uint256 budget) internal {
        Campaign storage stored = _campaigns[campaign];
        uint256 alreadyIssued = stored.issued;
        if (budget < alreadyIssued) revert LoyaltyTokenBudgetBelowIssued(campaign, alreadyIssued, budget);
        stored.budget = budget;
        emit CampaignBudgetSet(campaign, budget);
    }

    /// @dev The budget is checked once, after the loop: the revert undoes every mint of the batch.
    function _issueBatch(
        bytes32 campaign,
        bytes32[] calldata ids,
        address[] calldata to,
        uint256[] calldata amounts
    ) internal returns (uint256 issuedCount) {
        uint256 length = ids.length;
        if (to.length != length || amounts.length != length) revert LoyaltyTokenLengthMismatch();
        uint256 requested;
        UsedWordCache memory cache = UsedWordCache({index: NO_WORD, bits: 0});
        for (uint256 i = 0; i < length; ++i) {
            uint256 minted = _issue(campaign, ids[i], to[i], amounts[i], cache);
            if (minted != 0) {
                // Cannot overflow: every minted amount was just added to the total supply, checked.
                unchecked {
                    requested += minted;
                    ++issuedCount;
                }
            }
        }
        _storeCached(_usedIssuanceIds, cache);
        if (requested == 0) return 0;
        Campaign storage stored = _campaigns[campaign];
        uint256 alreadyIssued = stored.issued;
        uint256 remaining = stored.budget - alreadyIssued;
        if (requested > remaining) revert LoyaltyTokenBudgetExceeded(campaign, remaining, requested);
        stored.issued = alreadyIssued + requested;
    }

    /// @dev Returns the points minted: `amount`, or 0 when `id` is used.
    function _issue(bytes32 campaign, bytes32 id, address to, uint256 amount, UsedWordCache memory cache)
        internal
        returns (uint256)
    {
        _checkEntry(id, to, amount);
        if (!_markUsedCached(_usedIssuanceIds, cache, id)) return 0;
        _mint(to, amount);
        emit Issued(campaign, id, to, amount);
        return amount;
    }

    function _redeem(bytes32 id, address from, uint256 amount, bytes32 ref) internal {
        _checkEntry(id, from, amount);
        if (!_markUsed(_usedBurnIds, id)) revert LoyaltyTokenIdUsed(id);
        _burn(from, amount);
        emit Redeemed(id, from, amount, ref);
    }

    /// @dev Returns false, burning nothing, when `id` is used.
    function _expire(bytes32 id, address from, uint256 amount, bytes32 reason) internal returns (bool) {
        _checkEntry(id, from, amount);
        if (!_markUsed(_usedBurnIds, id)) return false;
        _burn(from, amount);
        emit Expired(id, from, amount, reason);
        return true;
    }

    function _expireBatch(
        bytes32[] calldata ids,
        address[] calldata from,
        uint256[] calldata amounts,
        bytes32 reason
    ) internal returns (uint256 expiredCount) {
        uint256 length = ids.length;
        if (from.length != length || amounts.length != length) revert LoyaltyTokenLengthMismatch();
        for (uint256 i = 0; i < length; ++i) {
            if (_expire(ids[i], from[i], amounts[i], reason)) ++expiredCount;
        }
    }

    /// @dev Mints and burns always pass; transfers between holders only when enabled.
    function _update(address from, address to, uint256 value) internal override {
        if (from != address(0) && to != address(0) && !_transfersEnabled) revert LoyaltyTokenTransfersDisabled();
        super._update(from, to, value);
    }

    function _checkEntry(bytes32 id, address holder, uint256 amount) internal pure {
        if (amount == 0) revert LoyaltyTokenZeroAmount(id);
        if (holder == address(0)) revert LoyaltyTokenZeroAddress(id);
    }

    /// @dev Sets the used flag of `id`; returns false, changing nothing, when it was already set.
    function _markUsed(mapping(uint256 => uint256) storage usedBits, bytes32 id) internal returns (bool) {
        uint256 wordIndex = uint256(id) >> 8;
        uint256 bit = 1 << (uint256(id) & 0xff);
        uint256 word = usedBits[wordIndex];
        if (word & bit != 0) return false;
        usedBits[wordIndex] = word | bit;
        return true;
    }

    function _markUsedCached(
        mapping(uint256 => uint256) storage usedBits,
        UsedWordCache memory cache,
        bytes32 id
    ) internal returns (bool) {
        uint256 wordIndex = uint256(id) >> 8;
        if (wordIndex != cache.index) {
            _storeCached(usedBits, cache);
            cache.index = wordIndex;
            cache.bits = usedBits[wordIndex];
        }
        uint256 bit = 1 << (uint256(id) & 0xff);
        if (cache.bits & bit != 0) return false;
        cache.bits |= bit;
        return true;
    }

    function _storeCached(mapping(uint256 => uint256) storage usedBits, UsedWordCache memory cache) internal {
        if (cache.index != NO_WORD) usedBits[cache.index] = cache.bits;
    }

    function _isUsed(mapping(uint256 => uint256) storage usedBits, bytes32 id) internal view returns (bool) {
        return usedBits[uint256(id) >> 8] & (1 << (uint256(id) & 0xff)) != 0;
    }
}
