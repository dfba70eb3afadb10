-- The queue's shared retry budget: EVENT deposit (a first attempt), refund (a
-- retry that worked), withdraw (pay for a retry if it can), or peek.
-- ARGV: event, ratio, floor, window ms.
-- Reply: {1 if paid (withdraw), ms until a retry may be paid, credit * 1000}.
local event = ARGV[2]
local ratio, floor, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if event == 'deposit' then ledger('f', window)
elseif event == 'refund' then ledger('r', window) end
local paid = 0
if event == 'withdraw' and budget(ratio, floor, window, false) == 0 then
  budget(ratio, floor, window, true)
  paid = 1
end
return {paid, math.ceil(budget(ratio, floor, window, false)), math.floor(credit(ratio, window) * 1000)}
