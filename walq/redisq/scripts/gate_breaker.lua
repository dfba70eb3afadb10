-- TASK's shared breaker: EVENT (success, failure, neutral, or peek) with
-- FAILURES in a row opening it for COOLDOWN ms. ARGV: task, event, failures, cooldown.
-- Reply: {state, ms until it admits a call, failures in a row, state before}.
local task, event = ARGV[2], ARGV[3]
local failures, cooldown = tonumber(ARGV[4]), tonumber(ARGV[5])
local b = breaker(task)
local was = b.st
if event == 'success' then
  if b.st == 'closed' then b.n = 0
  elseif b.st == 'half' and b.probe then b.st, b.n, b.probe = 'closed', 0, nil end
elseif event == 'failure' then
  if b.st == 'closed' then
    b.n = b.n + 1
    if b.n >= failures then b.st, b.reopen, b.probe = 'open', NOW + cooldown, nil end
  elseif b.st == 'half' and b.probe then
    b.st, b.reopen, b.probe = 'open', NOW + cooldown, nil
  end
elseif event == 'neutral' then
  if b.st == 'half' then b.probe = nil end
end
if event ~= 'peek' then save_breaker(task, b) end
local names = {closed = 'closed', open = 'open', half = 'half-open'}
return {names[b.st], math.ceil(breaker_at(b) - NOW), b.n, names[was]}
