"""The Lua scripts of the data model: every step that must be atomic is one of these.

Keys of other records are built inside a script from the prefix passed in ARGV, by the key
functions of the prelude keys.py generates, so the scripts assume one Redis node (or a cluster with
hash tags on the prefix). The rows and replies are laid out in rows.py.
Status words are the values of terms.JobStatus and terms.RunStatus.
"""

from __future__ import annotations

import re

from ductape_jobs import jobfields
from ductape_jobs.keys import lua_prelude

# A prelude's top-level definitions: `local function name(` or `local a, b = ...` at column 0.
# Everything else at column 0 in a prelude is an `end`, a comment or a blank line (test_scripts).
_DEFINITION = re.compile(r"local\s+(?:function\s+(\w+)|([\w ,]+?)\s*=)")
_NAME = re.compile(r"[A-Za-z_]\w*")


def _definitions(prelude: str) -> list[tuple[set[str], str]]:
    """The prelude cut into its top-level definitions: (names defined, text with the comments
    above it)."""
    found: list[tuple[set[str], list[str]]] = []
    above: list[str] = []
    for line in prelude.splitlines(keepends=True):
        start = _DEFINITION.match(line)
        if start:
            names = {start[1]} if start[1] else {n.strip() for n in start[2].split(",")}
            found.append((names, [*above, line]))
            above = []
        elif line.startswith("--") or not line.strip():
            above.append(line)
        else:
            found[-1][1].extend([*above, line])
            above = []
    return [(names, "".join(text)) for names, text in found]


def _script(*preludes_and_body: str) -> str:
    """A script: the definitions of its preludes that its body uses (directly or through another
    one kept), in their order, then the body. Lua makes a closure of every ``local function`` on
    every call, so a script carrying the whole prelude paid for dozens it never called."""
    *preludes, body = preludes_and_body
    definitions = _definitions("".join(preludes))
    used, kept = set(_NAME.findall(body)), [False] * len(definitions)
    grew = True
    while grew:  # a definition kept brings in the names it uses
        grew = False
        for i, (names, text) in enumerate(definitions):
            if not kept[i] and names & used:
                kept[i] = grew = True
                used |= set(_NAME.findall(text))
    return "".join(text for (_, text), keep in zip(definitions, kept, strict=True) if keep) + body


# Shared by every script that builds a key from the prefix: job_key(prefix, id), due_key(prefix),
# ... derived from keys.py, so Lua builds no key that keys.py does not (keys.lua_prelude); and the
# job hash's spec fields (jobfields.lua_prelude: packed(), put_spec()).
_KEYS = lua_prelude() + jobfields.lua_prelude()

# Shared by the batch scripts: writes collected while items are handled, then made once per key.
# push() groups Celery messages by queue list; one LPUSH per queue keeps their order.
_BATCHED_WRITES = """
local queued, queues = {}, {}
local function push(queue, message)
  local messages = queued[queue]
  if not messages then
    messages = {}
    queued[queue] = messages
    queues[#queues+1] = queue
  end
  messages[#messages+1] = message
end
local function push_all()
  for _, queue in ipairs(queues) do redis.call('LPUSH', queue, unpack(queued[queue])) end
end
local function add_all(key, pairs)
  if #pairs > 0 then redis.call('ZADD', key, unpack(pairs)) end
end
"""

# Shared by the scripts that finish a job, trim its runs or remove what left (the lifecycle;
# README "Sizing Redis"). Keys are the ones keys.py builds from the prefix.
_LIFECYCLE = (
    _KEYS
    + """
local FINISHED = {completed = true, failed = true, cancelled = true}
local MARGIN_S = 3600  -- TTLs outlast the sweep's own deadline: a backstop when no beat runs
local function job_of(run_id) return string.match(run_id, '^(.*):') end
-- A finished job leaves after ttl seconds: beat's sweep deletes it, its runs and every entry
-- pointing at them once its time in 'retired' passes. A dead-lettered run keeps its own TTL.
local function retire(prefix, id, ttl, now)
  local job, runs = job_key(prefix, id), runs_key(prefix, id)
  -- A job with dead letters stays as long as they do ('keep_s', set when one is made), so a
  -- redrive on their last day still finds the job it runs.
  local held = redis.call('HMGET', job, 'keep_s', 'fp')
  ttl = math.max(tonumber(ttl), tonumber(held[1] or 0) or 0)
  local keep = ttl + MARGIN_S
  redis.call('EXPIRE', job, keep)
  for _, run_id in ipairs(redis.call('ZRANGE', runs, 0, -1)) do
    local run = run_key(prefix, run_id)
    if redis.call('HGET', run, 'status') ~= 'failed' then redis.call('EXPIRE', run, keep) end
  end
  redis.call('EXPIRE', runs, keep)
  local fp = held[2]
  if fp and fp ~= '' and redis.call('GET', fp) == id then redis.call('DEL', fp) end
  redis.call('ZADD', retired_key(prefix), tonumber(now) + tonumber(ttl) * 1000, id)
end
local function retire_if_finished(prefix, id, ttl, now)
  if FINISHED[redis.call('HGET', job_key(prefix, id), 'status')] then retire(prefix, id, ttl, now) end
end
-- A one-off's own (not triggered) run moves the job's status, unless the job was cancelled:
-- a cancel is never undone by what becomes of a run already out.
local function one_off_of(job, run)
  local js = redis.call('HMGET', job, 'recurring', 'status')
  return js[1] == '0' and js[2] ~= 'cancelled' and redis.call('HGET', run, 'manual') ~= '1'
end
-- A run's last attempt failed: it becomes a dead letter with its own retention (the sweep also
-- caps them), counted in the job's failed_runs (beat's metrics), and a one-off it decides fails
-- and is retired. lifecycle = {prefix, job_retention_s, dead_retention_s}
local function dead_letter(run, job, dead, inflight, run_id, now, lifecycle)
  redis.call('HSET', run, 'status', 'failed')
  redis.call('ZADD', dead, now, run_id)
  redis.call('ZREM', inflight, run_id)
  redis.call('HINCRBY', job, 'failed_runs', 1)
  redis.call('HSET', job, 'keep_s', lifecycle[3])
  if one_off_of(job, run) then redis.call('HSET', job, 'status', 'failed') end
  redis.call('EXPIRE', run, lifecycle[3])
  retire_if_finished(lifecycle[1], job_of(run_id), lifecycle[2], now)
end
-- Keep a job's newest `kept` run records: older finished ones are deleted (a dead-lettered one
-- now belongs to the dead letters; an unfinished one stays until it finishes). Bounded per call.
local function trim_runs(prefix, runs, kept)
  local excess = redis.call('ZCARD', runs) - tonumber(kept)
  if excess <= 0 then return end
  for _, run_id in ipairs(redis.call('ZRANGE', runs, 0, math.min(excess, 64) - 1)) do
    local run = run_key(prefix, run_id)
    local status = redis.call('HGET', run, 'status')
    if status == 'failed' then
      redis.call('ZREM', runs, run_id)
    elseif not status or status == 'completed' or status == 'skipped' or status == 'cancelled'
        or status == 'sent' then
      redis.call('DEL', run)
      redis.call('ZREM', runs, run_id)
    end
  end
end
-- Delete a job that left, its runs (not its dead letters) and every index entry pointing at them.
local function drop(prefix, id)
  local job, runs = job_key(prefix, id), runs_key(prefix, id)
  for _, run_id in ipairs(redis.call('ZRANGE', runs, 0, -1)) do
    local run = run_key(prefix, run_id)
    if redis.call('HGET', run, 'status') ~= 'failed' then redis.call('DEL', run) end
    redis.call('ZREM', due_key(prefix), 'r:' .. run_id)
    redis.call('ZREM', inflight_key(prefix), run_id)
  end
  local fp = redis.call('HGET', job, 'fp')
  if fp and fp ~= '' and redis.call('GET', fp) == id then redis.call('DEL', fp) end
  -- an idempotency entry outlives its job's retirement (a retry still finds the finished
  -- job), never the job itself
  local idem = redis.call('HGET', job, 'idem')
  if idem and idem ~= '' and redis.call('GET', idem) == id then redis.call('DEL', idem) end
  redis.call('DEL', job, runs)
  redis.call('ZREM', jobs_key(prefix), id)
  redis.call('ZREM', retired_key(prefix), id)
  redis.call('ZREM', set_aside_key(prefix), id)
end
-- A run whose record is gone while its job is not (evicted, deleted by hand): counted under
-- `counter`, recorded again as a dead letter saying so (listed by failed(), can be redriven),
-- and a one-off waiting on it fails with that reason instead of staying queued forever.
-- Returns 1 when counted, 0 when the job left too (its retention passed: nothing was lost).
local function run_vanished(prefix, run_id, now, job_ttl, dead_ttl, counter)
  local id = job_of(run_id)
  if not id then return 0 end
  local job = job_key(prefix, id)
  local st = redis.call('HMGET', job, 'status', 'recurring')
  if not st[1] then return 0 end
  local why = 'its run record vanished from Redis (evicted, or deleted by hand); see ductape-jobs doctor'
  local run = run_key(prefix, run_id)
  redis.call('HSET', run, 'job_id', id, 'nominal_ms', string.match(run_id, ':(%d+)m?$') or 0,
    'status', 'failed', 'attempts', 0, 'error', why, 'finished_ms', now)
  if string.sub(run_id, -1) == 'm' then redis.call('HSET', run, 'manual', '1') end
  redis.call('EXPIRE', run, dead_ttl)
  redis.call('HSET', job, 'keep_s', dead_ttl)
  redis.call('ZADD', dead_key(prefix), now, run_id)
  redis.call('ZREM', inflight_key(prefix), run_id)
  redis.call('HINCRBY', stats_key(prefix), counter, 1)
  if st[2] == '0' and string.sub(run_id, -1) ~= 'm' and not FINISHED[st[1]] and st[1] ~= 'paused' then
    redis.call('HSET', job, 'status', 'failed', 'next_run_ms', '', 'last_error', why, 'updated_ms', now)
    redis.call('ZREM', due_key(prefix), 'j:' .. id)
    retire(prefix, id, job_ttl, now)
  end
  return 1
end
"""
)

# Cancelling a run (issue 14), shared by CANCEL_RUN, CHANGE_STATE and the worker's scripts; needs
# _LIFECYCLE. A run not started yet (queued, or retrying: its retry parked in the due index or
# sent by Celery later) ends 'cancelled' at once, so BEGIN_RUN never starts it. A running one is
# flagged ('cancel' on its hash): its heartbeat's RENEW_RUN tells the handler, and whatever ends
# the attempt (FINISH_RUN, LOSE_RUN, BEGIN_RUN after a lapsed lease) ends it 'cancelled', never
# retried nor dead-lettered. With `terminate` (the caller kills its process through Celery's
# revoke) it ends at once. A one-off's own run ends its job 'cancelled'; a schedule goes on.
_CANCEL = """
local function end_cancelled(prefix, run, run_id, now, why, job_ttl)
  redis.call('HSET', run, 'status', 'cancelled', 'finished_ms', now, 'error', why)
  redis.call('HDEL', run, 'lease_ms')  -- 'owner' stays: RENEW_RUN still tells a live handler
  redis.call('ZREM', due_key(prefix), 'r:' .. run_id)
  redis.call('ZREM', inflight_key(prefix), run_id)
  local id = job_of(run_id)
  local job = job_key(prefix, id)
  if one_off_of(job, run) then
    redis.call('HSET', job, 'status', 'cancelled', 'next_run_ms', '', 'updated_ms', now)
    redis.call('ZREM', due_key(prefix), 'j:' .. id)
    retire(prefix, id, job_ttl, now)
  end
end
-- Returns the status the run had (false when it has no record).
local function cancel_one(prefix, run_id, now, terminate, why, job_ttl)
  local run = run_key(prefix, run_id)
  local status = redis.call('HGET', run, 'status')
  if status == 'running' then redis.call('HSET', run, 'cancel', '1') end
  -- a 'buffered' run (repeat.overlap) has not started either: it waits in the due index
  local waiting = status == 'queued' or status == 'retrying' or status == 'buffered'
  if waiting or (status == 'running' and terminate) then
    end_cancelled(prefix, run, run_id, now, why, job_ttl)
  end
  return status
end
"""

# Create a batch of jobs; a job with a fingerprint (or key index entry, for a keyed job) whose
# live twin exists is not written, and the twin's id is returned for it instead (dedupe, also
# between jobs of the same batch); so is a one-off whose idempotency key names a job that exists.
# A run due now is recorded and its Celery message pushed in the same step. Index and queue
# entries are written with one command per key for the whole batch (at most CREATE_BATCH jobs).
# KEYS: jobs, due, inflight
# ARGV: rows.CreateJobsHead, then one rows.CreateJobsRow per job.
# fp_keys: the job's fingerprint key (a keyed job: its key entry), then its twins' under older
# session keys, one per line; a twin under any of them is found, only the first is written.
# idem_key is written with the job in this same step, so a call that timed out after its write
# landed is answered with that job when retried.
# Returns {index, twin_job_id, ...} (1-based) for the jobs not written because of a twin
# (rows.TwinFound).
CREATE_JOBS = _script(
    _KEYS,
    _BATCHED_WRITES,
    """
local HEAD, ROW = 2, 16  -- rows.CreateJobsHead, rows.CreateJobsRow
local prefix, now_ms = unpack(ARGV, 1, HEAD)
local twins, created, due, inflight = {}, {}, {}, {}
for i = 1, (#ARGV - HEAD) / ROW do
  local at = HEAD + (i - 1) * ROW
  local job_id, spec, status, recurring, next_run_ms, anchor_ms, runs_done, run_id, nominal_ms,
    due_ms, fp_keys, queue_key, message, idem_key, idem_ttl_ms,
    traceparent = unpack(ARGV, at + 1, at + ROW)
  local fp, twin = '', false
  for key in string.gmatch(fp_keys, '[^\\n]+') do
    if fp == '' then fp = key end
    local found = not twin and redis.call('GET', key)
    -- a fingerprint naming a job whose record vanished is no twin: it is written anew below
    if found and redis.call('EXISTS', job_key(prefix, found)) == 1 then twin = found end
  end
  local held = idem_key ~= '' and redis.call('GET', idem_key)
  -- likewise an idempotency key whose job left: the job is created anew
  if held and redis.call('EXISTS', job_key(prefix, held)) == 1 then twin = held end
  if twin then
    twins[#twins+1] = i
    twins[#twins+1] = twin
  else
    if fp ~= '' then redis.call('SET', fp, job_id) end
    if idem_key ~= '' then redis.call('SET', idem_key, job_id, 'PX', idem_ttl_ms) end
    -- fields with nothing to say are left out (read as ''; attempts as 0; updated_ms as
    -- created_ms): a small hash stays a small listpack
    local fields = {'status', status, 'recurring', recurring, 'next_run_ms', next_run_ms,
      'anchor_ms', anchor_ms, 'runs_done', runs_done, 'created_ms', now_ms}
    if fp ~= '' then fields[#fields+1] = 'fp'; fields[#fields+1] = fp end
    if run_id ~= '' then fields[#fields+1] = 'last_run_id'; fields[#fields+1] = run_id end
    if idem_key ~= '' then fields[#fields+1] = 'idem'; fields[#fields+1] = idem_key end
    redis.call('HSET', job_key(prefix, job_id), unpack(spec_args(spec, fields, now_ms)))
    created[#created+1] = now_ms
    created[#created+1] = job_id
    if run_id ~= '' then
      redis.call('HSET', run_key(prefix, run_id), 'job_id', job_id, 'nominal_ms', nominal_ms,
        'status', 'queued', 'attempts', 0, 'queued_ms', now_ms)
      if traceparent ~= '' then redis.call('HSET', run_key(prefix, run_id), 'traceparent', traceparent) end
      redis.call('ZADD', runs_key(prefix, job_id), nominal_ms, run_id)
      inflight[#inflight+1] = now_ms
      inflight[#inflight+1] = run_id
      if queue_key ~= '' then push(queue_key, message) end
    end
    if due_ms ~= '' then
      due[#due+1] = due_ms
      due[#due+1] = 'j:' .. job_id
    end
  end
end
add_all(KEYS[1], created)
add_all(KEYS[2], due)
add_all(KEYS[3], inflight)
push_all()
return twins
""",
)
CREATE_BATCH = 1_000  # jobs per CREATE_JOBS call: bounds its unpack() sizes and its run time

# Beat: claim a batch of due entries, advance their schedules and push their Celery messages,
# each item only if its job is unchanged since beat read it. Refused whole when the caller's
# fencing token is no longer the lock's (a leader that stalled past its lock sends nothing).
# An item beat could not read or decide has no message; its queue_key slot carries the reason,
# and its job is set aside: marked failed with that reason (retired like any finished job),
# listed in the set-aside index.
# An imported beat_schedule entry (overlap 'celery') sends its own plain Celery task: always
# released (Celery beat has no overlap rule), its run recorded 'sent' and kept out of the
# in-flight index (no runner reports on it, so lost-run resend must never look at it).
# A recurring slot obeys its repeat.overlap (see overlap() below): skipped (recorded as a
# 'skipped' run, counted in the job's skipped_slots, its schedule advanced without counting
# toward limit) or buffered (a 'buffered' run waiting as an r: entry, handed over once the run
# before it finishes). A skipped slot is not returned as claimed: nothing was sent.
# KEYS: beat_lock, due, inflight, dead, set_aside
# ARGV: rows.ClaimDueHead, then one rows.ClaimDueRow per item (its version: the job's, as beat
# read it; an update in between changes it, and the item is not claimed).
# Returns the indexes (1-based) of the claimed or set-aside items, or {-1} when fenced out
# (rows.Claimed).
CLAIM_DUE = _script(
    _BATCHED_WRITES,
    _LIFECYCLE,
    """
local HEAD, ROW = 6, 12  -- rows.ClaimDueHead, rows.ClaimDueRow
local prefix, fence, now_ms, runs_kept, job_retention_s, dead_retention_s = unpack(ARGV, 1, HEAD)
if redis.call('GET', KEYS[1]) ~= fence then return {-1} end
-- Queue pushes and index writes are made once per key at the end: no item reads another
-- item's entries (due-index members are distinct).
local claimed, inflight, rescheduled = {}, {}, {}
local function set_aside(id, reason)
  local job = job_key(prefix, id)
  redis.call('HSET', job, 'status', 'failed', 'next_run_ms', '', 'updated_ms', now_ms, 'last_error', reason)
  redis.call('ZREM', KEYS[2], 'j:' .. id)
  retire(prefix, id, job_retention_s, now_ms)  -- also frees its fingerprint: scheduling it again creates one
  redis.call('ZADD', KEYS[5], now_ms, id)
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -1001)  -- the newest 1,000 are listed
end
-- repeat.overlap, decided here so that no two beats can both release: while the schedule's
-- previous slot run (the job's slot_run; before any claim, CREATE_JOBS's first run, named by
-- the anchor) is unfinished, 'skip' skips the slot and 'buffer_one' buffers it behind that run
-- unless a buffered one already waits (then it skips). Queued and retrying count as
-- unfinished: they will run, and releasing more would pile slots up behind a slow handler.
-- Returns 'release', or 'buffer' | 'skip' with the previous run id and its status.
local UNFINISHED = {queued = true, running = true, retrying = true, buffered = true}
local BUFFER_POLL_MS = 1000  -- how often a buffered run looks again at the run it waits on
local function overlap(policy, id, slot_run, anchor, runs_done)
  if policy == '' or policy == 'allow' then return 'release' end
  local prev = slot_run
  if not prev and runs_done ~= '0' then prev = id .. ':' .. anchor end
  local status = prev and redis.call('HGET', run_key(prefix, prev), 'status')
  if not status or not UNFINISHED[status] then return 'release' end
  if policy == 'buffer_one' and status ~= 'buffered' then return 'buffer', prev, status end
  return 'skip', prev, status
end
for i = 1, (#ARGV - HEAD) / ROW do
  local at = HEAD + (i - 1) * ROW
  local member, due_ms, runs_done, run_id, nominal_ms, next_ms, queue_key, message, overlap_policy,
    skip_next_ms, version, traceparent = unpack(ARGV, at + 1, at + ROW)
  local kind, id = string.sub(member, 1, 1), string.sub(member, 3)
  if kind == 'r' then
    local run = run_key(prefix, id)
    local rs = redis.call('HMGET', run, 'status', 'job_id', 'manual', 'behind')
    local job = job_key(prefix, rs[2] or '')
    local js = redis.call('HMGET', job, 'status', 'recurring')
    if rs[1] == 'buffered' and (js[1] == 'cancelled' or message == '' or not js[1]) then
      -- nothing will send it: it ends skipped, so its schedule never waits on it
      redis.call('HSET', run, 'status', 'skipped', 'finished_ms', now_ms)
      redis.call('ZREM', KEYS[2], member)
    elseif rs[1] == 'buffered' then
      local before = rs[4] and redis.call('HGET', run_key(prefix, rs[4]), 'status')
      if redis.call('ZSCORE', KEYS[2], member) ~= due_ms then
        -- moved since beat read it: left for the next tick
      elseif before and UNFINISHED[before] then
        rescheduled[#rescheduled+1] = tonumber(now_ms) + BUFFER_POLL_MS
        rescheduled[#rescheduled+1] = member
      else
        redis.call('HSET', run, 'status', 'queued', 'queued_ms', now_ms)
        redis.call('HDEL', run, 'behind')
        redis.call('ZREM', KEYS[2], member)
        push(queue_key, message)
        inflight[#inflight+1] = now_ms
        inflight[#inflight+1] = id
        claimed[#claimed+1] = i
      end
    elseif rs[1] == 'retrying' and js[1] == 'cancelled' then
      -- cancelled while its retry waited here: the run ends skipped and is never sent, so the
      -- cancel is not undone by the claim below setting the one-off's status back to queued
      redis.call('HSET', run, 'status', 'skipped', 'finished_ms', now_ms)
      redis.call('ZREM', KEYS[2], member)
    elseif rs[1] == 'retrying' and message == '' and queue_key ~= '' and js[1] then
      redis.call('HSET', run, 'status', 'failed', 'error', queue_key, 'finished_ms', now_ms)
      redis.call('ZREM', KEYS[2], member)
      redis.call('ZADD', KEYS[4], now_ms, id)
      redis.call('HINCRBY', job, 'failed_runs', 1)  -- read by beat's metrics
      redis.call('EXPIRE', run, dead_retention_s)  -- a dead letter keeps its own retention
      set_aside(rs[2], queue_key)
      claimed[#claimed+1] = i
    elseif rs[1] ~= 'retrying' or message == '' or not js[1] then
      -- another delivery already ran it (or the run or its job is gone): a stale entry that
      -- would otherwise be read again on every tick, with beat never sleeping
      if redis.call('ZREM', KEYS[2], member) == 1 and not rs[1] then
        run_vanished(prefix, id, now_ms, job_retention_s, dead_retention_s, 'due_vanished')
      end
    elseif redis.call('ZSCORE', KEYS[2], member) == due_ms then
      redis.call('HSET', run, 'status', 'queued', 'queued_ms', now_ms)
      redis.call('ZREM', KEYS[2], member)
      push(queue_key, message)
      inflight[#inflight+1] = now_ms
      inflight[#inflight+1] = id
      if js[2] == '0' and rs[3] ~= '1' then
        redis.call('HSET', job, 'status', 'queued', 'updated_ms', now_ms)
      end
      claimed[#claimed+1] = i
    end
  else
    local job = job_key(prefix, id)
    local st = redis.call('HMGET', job, 'status', 'next_run_ms', 'runs_done', 'recurring', 'fp',
      'slot_run', 'anchor_ms', 'version')
    if message == '' then
      -- the job is gone, or beat could not read or decide it: never retried on every tick
      if redis.call('ZREM', KEYS[2], member) == 1 and not st[1] then
        redis.call('HINCRBY', stats_key(prefix), 'due_vanished', 1)
      end
      if st[1] == 'scheduled' then
        set_aside(id, queue_key ~= '' and queue_key or 'beat could not read this job record')
        claimed[#claimed+1] = i
      end
    elseif st[1] == 'scheduled' and st[2] == due_ms and st[3] == runs_done and (st[8] or '0') == version then
      local plain = overlap_policy == 'celery'
      local verdict, prev, prev_status = overlap(plain and '' or overlap_policy, id, st[6], st[7], runs_done)
      local run = run_key(prefix, run_id)
      local runs = runs_key(prefix, id)
      if verdict == 'skip' then
        -- recorded, counted, and the schedule moves on without counting it toward limit
        redis.call('HSET', run, 'job_id', id, 'nominal_ms', nominal_ms, 'status', 'skipped',
          'attempts', 0, 'finished_ms', now_ms,
          'error', 'repeat.overlap=' .. overlap_policy .. ': run ' .. prev .. ' was still ' .. prev_status)
        redis.call('HINCRBY', job, 'skipped_slots', 1)
        next_ms = skip_next_ms
      else
        redis.call('HSET', run, 'job_id', id, 'nominal_ms', nominal_ms, 'attempts', 0, 'queued_ms', now_ms)
        if traceparent ~= '' then redis.call('HSET', run, 'traceparent', traceparent) end
        if verdict == 'buffer' then
          redis.call('HSET', run, 'status', 'buffered', 'behind', prev)
          rescheduled[#rescheduled+1] = tonumber(now_ms) + BUFFER_POLL_MS
          rescheduled[#rescheduled+1] = 'r:' .. run_id
        elseif plain then
          redis.call('HSET', run, 'status', 'sent')
          push(queue_key, message)
        else
          redis.call('HSET', run, 'status', 'queued')
          push(queue_key, message)
          inflight[#inflight+1] = now_ms
          inflight[#inflight+1] = run_id
        end
        redis.call('HSET', job, 'runs_done', tonumber(runs_done) + 1, 'last_run_id', run_id,
          'slot_run', run_id)
        claimed[#claimed+1] = i
      end
      redis.call('ZADD', runs, nominal_ms, run_id)
      trim_runs(prefix, runs, runs_kept)
      redis.call('HSET', job, 'next_run_ms', next_ms, 'updated_ms', now_ms)
      if st[4] == '0' then
        redis.call('HSET', job, 'status', 'queued')
        redis.call('ZREM', KEYS[2], member)
      elseif next_ms == '' then
        redis.call('HSET', job, 'status', 'completed')
        redis.call('ZREM', KEYS[2], member)
        retire(prefix, id, job_retention_s, now_ms)
      else
        rescheduled[#rescheduled+1] = next_ms
        rescheduled[#rescheduled+1] = member
      end
    elseif st[1] ~= 'scheduled' then
      -- cancelled, paused or gone while waiting: the index entry is stale, drop it
      redis.call('ZREM', KEYS[2], member)
    end
  end
end
add_all(KEYS[2], rescheduled)
add_all(KEYS[3], inflight)
push_all()
return claimed
""",
)

# Beat, as the leader, when it takes the lead: make the live schedules imported from a Celery
# app's beat_schedule the ones its config lists (beat/imported.py), in one step fenced by the
# leader's token, so two beats starting together never double an entry. A job id is derived from
# the app and the entry's name; an entry whose digest (everything the config says of it) is
# unchanged and whose job is live is left alone; a changed one is written over in place (same
# job id, runs and their history kept, next run from the new rule; a paused job stays paused);
# a new one, or one whose job finished (cancelled by hand, or set aside), is created afresh; an
# entry no longer in the config is cancelled and retired like any cancelled schedule.
# KEYS: beat_lock, imported, due, jobs, retired, set_aside
# ARGV: prefix, fence, now_ms, job_retention_s, then 5 per entry:
#   job_id, digest, spec (packed fields, jobfields.py), next_run_ms, anchor_ms
# Returns {created, updated, unchanged, removed} counts, or {-1} when fenced out.
SYNC_IMPORTED = _script(
    _LIFECYCLE,
    """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return {-1} end
local prefix, now, job_ttl = ARGV[1], ARGV[3], ARGV[4]
local wanted, counts = {}, {0, 0, 0, 0}
for b = 5, #ARGV, 5 do
  local id, digest, next_ms = ARGV[b], ARGV[b+1], ARGV[b+3]
  wanted[id] = true
  local job = job_key(prefix, id)
  local status = redis.call('HGET', job, 'status')
  local live = status and not FINISHED[status]
  if live and redis.call('HGET', KEYS[2], id) == digest then
    counts[3] = counts[3] + 1
  else
    if live then
      counts[2] = counts[2] + 1
      put_spec(job, ARGV[b+2])
      redis.call('HSET', job, 'anchor_ms', ARGV[b+4], 'next_run_ms', next_ms, 'updated_ms', now)
      -- as UPDATE_JOB does: a claim decided from the old entry fails CLAIM_DUE's version check
      redis.call('HINCRBY', job, 'version', 1)
    else
      counts[1] = counts[1] + 1
      status = 'scheduled'
      redis.call('DEL', job)
      redis.call('HSET', job, unpack(spec_args(ARGV[b+2], {'status', status, 'recurring', 1,
        'next_run_ms', next_ms, 'anchor_ms', ARGV[b+4], 'runs_done', 0, 'created_ms', now}, now)))
      redis.call('PERSIST', runs_key(prefix, id))
      redis.call('ZADD', KEYS[4], now, id)
      redis.call('ZREM', KEYS[5], id)
      redis.call('ZREM', KEYS[6], id)
    end
    if status == 'scheduled' then redis.call('ZADD', KEYS[3], next_ms, 'j:' .. id) end
    redis.call('HSET', KEYS[2], id, digest)
  end
end
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not wanted[id] then
    local job = job_key(prefix, id)
    local status = redis.call('HGET', job, 'status')
    if status and not FINISHED[status] then
      redis.call('HSET', job, 'status', 'cancelled', 'next_run_ms', '', 'updated_ms', now)
      redis.call('ZREM', KEYS[3], 'j:' .. id)
      retire(prefix, id, job_ttl, now)
    end
    redis.call('HDEL', KEYS[2], id)
    counts[4] = counts[4] + 1
  end
end
return counts
""",
)

# An attempt that ended without recording its outcome (its process died, was OOM-killed or was
# killed at the hard time limit) still counts: after the job's last attempt (retries + 1) the run
# is dead-lettered with the reason, once. The job's retries are read from its spec only here, on
# this rare path (retries_of). A dead letter gets its retention and a finished one-off job is
# retired, as FINISH_RUN does (_LIFECYCLE). Returns true when the run was dead-lettered.
# lifecycle = {prefix, job_retention_s, dead_retention_s}
_LOSE_ATTEMPT = (
    _LIFECYCLE
    + """
local function lose_attempt(run, job, dead, inflight, run_id, attempts, reason, now, lifecycle)
  redis.call('HSET', job, 'last_error', reason, 'last_run_id', run_id, 'updated_ms', now)
  if attempts < retries_of(job) + 1 then
    redis.call('HSET', run, 'error', reason, 'traceback', '')
    return false
  end
  redis.call('HSET', run, 'error', reason, 'traceback', '', 'finished_ms', now)
  redis.call('HDEL', run, 'owner', 'lease_ms')
  dead_letter(run, job, dead, inflight, run_id, now, lifecycle)
  return true
end
"""
)

# Worker: start a run unless it already finished, is cancelled, or another delivery holds it
# (its lease, renewed by that delivery's heartbeat, has not run out). ``owner`` names this
# delivery (host:pid:nonce): asking again with the same owner (a lost reply, a write no replica
# confirmed) starts nothing new, and renews its lease: that delivery is alive.
# A run still 'running' with its lease run out lost its attempt (_LOSE_ATTEMPT).
# A cancelled run is done; one cancelled while its lapsed attempt ran ends 'cancelled' (_CANCEL).
# KEYS: run, job, inflight, dead
# ARGV: now_ms, lease_ms, run_id, owner, prefix, job_retention_s, dead_retention_s
# Returns {'run', attempts, spec, nominal_ms, manual} | {'done'} | {'skip'} | {'gone'} | {'busy', wait_ms}
# (spec: the job's spec fields packed, jobfields.SPEC; an old record's 'spec' JSON)
BEGIN_RUN = _script(
    _LOSE_ATTEMPT,
    _CANCEL,
    """
local run = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'started_ms', 'nominal_ms', 'manual',
  'lease_ms', 'owner', 'cancel')
local job = redis.call('HMGET', KEYS[2], 'status', 'recurring')
if not run[1] or not job[1] then
  local was_out = redis.call('ZREM', KEYS[3], ARGV[3]) == 1
  -- A record gone while its run was out vanished (evicted): 'gone', for RUN_GONE to record. A
  -- late copy of a run that finished and was trimmed since is only skipped.
  if not run[1] and job[1] and was_out then return {'gone'} end
  return {'skip'}
end
local status, now, lease = run[1], tonumber(ARGV[1]), tonumber(ARGV[2])
if status == 'completed' or status == 'failed' or status == 'skipped' or status == 'cancelled' then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return {'done'}
end
if status == 'running' then
  if run[7] == ARGV[4] then  -- the same delivery again, alive: its lease runs from now
    redis.call('HSET', KEYS[1], 'lease_ms', now + lease)
    return {'run', tonumber(run[2]), packed(KEYS[2], SPEC_FIELDS), run[4], run[5] or ''}
  end
  local held_until = tonumber(run[6] or '') or tonumber(run[3]) + lease
  if held_until > now then return {'busy', tostring(held_until - now)} end
  if run[8] == '1' then  -- cancelled while that attempt ran: no further attempt
    end_cancelled(ARGV[5], KEYS[1], ARGV[3], now, 'cancelled; its worker was lost', ARGV[6])
    return {'done'}
  end
  local attempts, lifecycle = tonumber(run[2]), {ARGV[5], ARGV[6], ARGV[7]}
  if lose_attempt(KEYS[1], KEYS[2], KEYS[4], KEYS[3], ARGV[3], attempts, 'worker lost', now, lifecycle) then
    return {'done'}
  end
end
-- A schedule set aside as failed (its sealed input can no longer be opened) runs no more.
if job[1] == 'cancelled' or (job[1] == 'failed' and job[2] == '1') then
  redis.call('HSET', KEYS[1], 'status', 'skipped', 'finished_ms', now)
  redis.call('ZREM', KEYS[3], ARGV[3])
  return {'skip'}
end
local attempts = tonumber(run[2] or '0') + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts, 'started_ms', now,
  'lease_ms', now + lease, 'owner', ARGV[4])
redis.call('ZADD', KEYS[3], now, ARGV[3])
-- A manual (triggered) run is extra: it never moves a one-off's status, or the one-off's own
-- scheduled run would be dropped by beat as no longer 'scheduled'.
if job[2] == '0' and run[5] ~= '1' then
  redis.call('HSET', KEYS[2], 'attempts', attempts, 'updated_ms', now, 'status', 'running')
else
  redis.call('HSET', KEYS[2], 'attempts', attempts, 'updated_ms', now)
end
return {'run', attempts, packed(KEYS[2], SPEC_FIELDS), run[4], run[5] or ''}
""",
)

# Worker: the heartbeat of a running attempt renews its lease and marks it moved (beat's
# lost-run sweep only looks at runs that have not moved for a while). Its reply also carries a
# cancel (_CANCEL), so a handler learns of it with no polling of its own.
# KEYS: run, inflight   ARGV: owner, now_ms, lease_ms, run_id
# Returns 1 while the attempt is still this delivery's, 2 when it is and was cancelled (running
# and flagged, or already ended 'cancelled' by a terminating cancel), else 0.
RENEW_RUN = """
local st = redis.call('HMGET', KEYS[1], 'status', 'owner', 'cancel')
if st[2] ~= ARGV[1] then return 0 end
if st[1] == 'cancelled' then return 2 end
if st[1] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'lease_ms', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[4])
return st[3] == '1' and 2 or 1
"""

# Worker (main process): the pool process running a run died or was killed at the hard time
# limit. Its attempt counts (_LOSE_ATTEMPT); if attempts remain, the run is free at once for the
# delivery Celery puts back on the queue, instead of waiting for its lease to run out.
# KEYS: run, job, dead, inflight
# ARGV: run_id, owner_prefix (host:pid:), reason, now_ms, prefix, job_retention_s, dead_retention_s
# A run cancelled while that attempt ran ends 'cancelled' instead (_CANCEL): no further attempt.
# Returns 'dead', 'retry', 'cancelled', or 'moved' (the run is no longer that process's attempt).
LOSE_RUN = _script(
    _LOSE_ATTEMPT,
    _CANCEL,
    """
local run = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'owner')
local prefix, now = ARGV[2], ARGV[4]
local gone = redis.call('EXISTS', KEYS[2]) == 0
if run[1] ~= 'running' or string.sub(run[3] or '', 1, #prefix) ~= prefix or gone then
  return 'moved'
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  end_cancelled(ARGV[5], KEYS[1], ARGV[1], now, 'cancelled; ' .. ARGV[3], ARGV[6])
  return 'cancelled'
end
local lifecycle = {ARGV[5], ARGV[6], ARGV[7]}
if lose_attempt(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(run[2]), ARGV[3], now, lifecycle) then
  return 'dead'
end
redis.call('HSET', KEYS[1], 'status', 'retrying', 'queued_ms', now, 'finished_ms', now)
redis.call('HDEL', KEYS[1], 'owner', 'lease_ms')
redis.call('ZADD', KEYS[4], now, ARGV[1])
if one_off_of(KEYS[2], KEYS[1]) then redis.call('HSET', KEYS[2], 'status', 'queued') end
return 'retry'
""",
)

# Worker: record the outcome of one attempt, fenced by the attempt number.
# A run flagged cancelled ends 'cancelled' unless it completed: never retried nor dead-lettered,
# whatever its handler raised once cancelled (_CANCEL).
# KEYS: run, job, due, dead, inflight
# ARGV: rows.FinishRunArgs
FINISH_RUN = _script(
    _LIFECYCLE,
    _CANCEL,
    """
local ARGS = 13  -- rows.FinishRunArgs
local attempt, now_ms, outcome, result_json, error_text, traceback, cached, retention_s, due_ms,
  run_id, prefix, job_retention_s, dead_retention_s = unpack(ARGV, 1, ARGS)
local run = redis.call('HMGET', KEYS[1], 'attempts', 'status', 'manual', 'cancel', 'error')
if run[1] ~= attempt then return 0 end
local prior = run[2]
if prior ~= 'running' then
  -- Sent again because its reply was lost: already written, so written once (failed_runs
  -- counts a run once). Anything else moved the run on meanwhile (it was dead-lettered for a
  -- lapsed lease, say): this attempt's outcome no longer applies.
  local replay = prior == outcome or (prior == 'retrying' and string.sub(outcome, 1, 5) == 'retry')
  return replay and 1 or 0
end
local job = redis.call('HMGET', KEYS[2], 'recurring', 'status', 'last_error')
if not job[1] and not job[2] and redis.call('EXISTS', KEYS[2]) == 0 then
  -- The job left while this run was out (its retention passed): the outcome goes on the run
  -- alone, or the writes below would bring back a job record without its spec.
  local ended = (outcome == 'completed' or outcome == 'cancelled') and outcome or 'failed'
  redis.call('HSET', KEYS[1], 'status', ended,
    'finished_ms', now_ms, 'error', error_text)
  redis.call('EXPIRE', KEYS[1], retention_s)
  redis.call('ZREM', KEYS[5], run_id)
  return 1
end
-- A triggered run leaves the status alone; so does any run of a job cancelled while it ran (its
-- retry then finds the job cancelled and is skipped: the cancel is never undone). (one_off_of,
-- from the fields read above: the hot path of every run, so each record is read once.)
local one_off = job[1] == '0' and job[2] ~= 'cancelled' and run[3] ~= '1'
if outcome == 'completed' then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_ms', now_ms, 'result', result_json,
    'cached', cached)
  if run[5] then redis.call('HDEL', KEYS[1], 'error', 'traceback') end  -- set together
  redis.call('EXPIRE', KEYS[1], retention_s)
  local status = one_off and 'completed' or job[2]
  local wrote = {'last_run_id', run_id, 'updated_ms', now_ms, 'result', result_json}
  if one_off then wrote[7], wrote[8] = 'status', status end
  redis.call('HSET', KEYS[2], unpack(wrote))
  if job[3] then redis.call('HDEL', KEYS[2], 'last_error') end
  redis.call('ZREM', KEYS[5], run_id)
  if FINISHED[status] then retire(prefix, job_of(run_id), job_retention_s, now_ms) end
  return 1
end
redis.call('HSET', KEYS[2], 'last_run_id', run_id, 'updated_ms', now_ms)
if outcome == 'cancelled' or run[4] == '1' then
  local why = error_text ~= '' and error_text or 'cancelled'
  end_cancelled(prefix, KEYS[1], run_id, now_ms, why, job_retention_s)
  return 1
end
redis.call('HSET', KEYS[1], 'error', error_text, 'traceback', traceback, 'finished_ms', now_ms)
redis.call('HSET', KEYS[2], 'last_error', error_text)
if outcome == 'failed' then
  dead_letter(KEYS[1], KEYS[2], KEYS[4], KEYS[5], run_id, now_ms, {prefix, job_retention_s, dead_retention_s})
else
  redis.call('HSET', KEYS[1], 'status', 'retrying')
  if outcome == 'retry_due' then
    redis.call('ZADD', KEYS[3], due_ms, 'r:' .. run_id)
    redis.call('ZREM', KEYS[5], run_id)  -- in the due index until beat hands it back
    if one_off then redis.call('HSET', KEYS[2], 'status', 'scheduled') end
  else
    redis.call('HSET', KEYS[1], 'queued_ms', now_ms)  -- Celery sends the retry next
    redis.call('ZADD', KEYS[5], now_ms, run_id)
    if one_off then redis.call('HSET', KEYS[2], 'status', 'queued') end
  end
end
return 1
""",
)

# Cancel, pause or resume a job, or set it aside as failed (a worker found that no run of it
# can ever succeed), conditional on its current status.
# A one-off whose run waits in the due index for a retry cannot be paused (its run has started;
# cancel it instead): pausing it would leave the retry entry to undo the pause.
# A job set aside is listed in the set-aside index (as CLAIM_DUE lists those beat sets aside),
# a one-off too, whose failed run already made it 'failed'.
# A cancel also cancels the job's running runs (_CANCEL; `terminate`: they end at once, their
# processes are being killed) and returns their ids for Celery's revoke; runs not started yet
# are skipped by BEGIN_RUN as before.
# KEYS: job, due, set_aside
# ARGV: action, job_id, now_ms, next_ms (resume), expected_runs_done (resume), prefix, job_retention_s,
#       terminate ('1' | '', cancel)
# Returns {'ok', running run ids (cancel)...}, {'refused', current_status} or {'missing'}
CHANGE_STATE = _script(
    _LIFECYCLE,
    _CANCEL,
    """
local st = redis.call('HMGET', KEYS[1], 'status', 'fp', 'runs_done', 'recurring')
if not st[1] then return {'missing'} end
local action, member, now = ARGV[1], 'j:' .. ARGV[2], ARGV[3]
local running = {'ok'}
if action == 'set_aside' and st[1] ~= 'completed' and st[1] ~= 'cancelled' then
  redis.call('ZADD', KEYS[3], now, ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -1001)  -- the newest 1,000 are listed
end
if action == 'cancel' or action == 'set_aside' then
  if st[1] == 'completed' or st[1] == 'failed' or st[1] == 'cancelled' then
    return {'refused', st[1]}
  end
  local status = action == 'cancel' and 'cancelled' or 'failed'
  redis.call('HSET', KEYS[1], 'status', status, 'next_run_ms', '', 'updated_ms', now)
  redis.call('ZREM', KEYS[2], member)
  if action == 'cancel' then
    for _, run_id in ipairs(redis.call('ZRANGE', runs_key(ARGV[6], ARGV[2]), 0, -1)) do
      if redis.call('HGET', run_key(ARGV[6], run_id), 'status') == 'running' then
        cancel_one(ARGV[6], run_id, now, ARGV[8] == '1', 'cancelled with its job', ARGV[7])
        running[#running+1] = run_id
      end
    end
  end
  retire(ARGV[6], ARGV[2], ARGV[7], now)
elseif action == 'pause' then
  if st[1] ~= 'scheduled' then return {'refused', st[1]} end
  if st[4] == '0' and st[3] ~= '0' then return {'refused', 'retrying'} end
  redis.call('HSET', KEYS[1], 'status', 'paused', 'updated_ms', now)
  redis.call('ZREM', KEYS[2], member)
elseif action == 'resume' then
  if st[1] ~= 'paused' or st[3] ~= ARGV[5] then return {'refused', st[1]} end
  if ARGV[4] == '' then
    redis.call('HSET', KEYS[1], 'status', 'completed', 'next_run_ms', '', 'updated_ms', now)
    retire(ARGV[6], ARGV[2], ARGV[7], now)
  else
    redis.call('HSET', KEYS[1], 'status', 'scheduled', 'next_run_ms', ARGV[4], 'updated_ms', now)
    redis.call('ZADD', KEYS[2], ARGV[4], member)
  end
end
return running
""",
)

# Producer: cancel one run (cancel_run; see _CANCEL). A finished run is refused with its status.
# KEYS: run   ARGV: prefix, run_id, now_ms, terminate ('1' | ''), job_retention_s
# Returns {'ok', status it had} | {'refused', status} | {'missing'}
CANCEL_RUN = _script(
    _LIFECYCLE,
    _CANCEL,
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
local live = {queued = true, retrying = true, running = true, buffered = true}
if not live[status] then return {'refused', status} end
cancel_one(ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', 'cancelled (cancel_run)', ARGV[5])
return {'ok', status}
""",
)

# Add one extra run now (trigger) or re-queue a dead-lettered one (redrive), with its message.
# KEYS: job, run, job_runs, queue, dead, inflight
# ARGV: action ('trigger' | 'redrive'), job_id, run_id, now_ms, message, prefix, runs_kept
ADD_RUN = _script(
    _LIFECYCLE,
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
local now = ARGV[4]
if ARGV[1] == 'trigger' then
  if status == 'cancelled' then return {'refused', status} end
  redis.call('HSET', KEYS[2], 'job_id', ARGV[2], 'nominal_ms', now, 'status', 'queued',
    'attempts', 0, 'queued_ms', now, 'manual', '1')
  redis.call('ZADD', KEYS[3], now, ARGV[3])
  trim_runs(ARGV[6], KEYS[3], ARGV[7])
else
  if redis.call('HGET', KEYS[2], 'status') ~= 'failed' then
    return {'refused', redis.call('HGET', KEYS[2], 'status') or 'missing'}
  end
  if status == 'cancelled' then return {'refused', status} end  -- a cancel is never undone
  redis.call('HSET', KEYS[2], 'status', 'queued', 'attempts', 0, 'queued_ms', now)
  redis.call('HDEL', KEYS[2], 'finished_ms')
  redis.call('ZREM', KEYS[5], ARGV[3])
  redis.call('PERSIST', KEYS[2])  -- live again: no longer a dead letter's retention
  -- back in its job's runs, so the job's retention takes it along (it may have been trimmed)
  redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[2], 'nominal_ms') or now, ARGV[3])
  if redis.call('HGET', KEYS[1], 'recurring') == '0' and redis.call('HGET', KEYS[2], 'manual') ~= '1' then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_ms', now)
  end
end
-- A run is out: the job (finished or not) stays until that run finishes; FINISH_RUN retires a
-- finished job again then.
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[3])
redis.call('ZREM', retired_key(ARGV[6]), ARGV[2])
redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[6], now, ARGV[3])
return {'ok'}
""",
)

# Backfill: add the runs of past slots of a recurring job, each with its message, under the
# slots' own run ids. A slot whose run id the job still knows (its run record, or its entry in
# the job's runs index) is left alone: it ran, runs, or waits, so no slot runs twice; one that
# repeat.overlap skipped is run now. Runs go in the runs index at now_ms, so they are trimmed
# in the order they were added (beside triggered runs), not first for being old.
# KEYS: job, job_runs, inflight
# ARGV: rows.BackfillHead, then one rows.BackfillRow per slot.
# Returns {'ok', run_id, ...} (the runs added), {'refused', status} or {'missing'} (rows.Backfilled)
BACKFILL = _script(
    _BATCHED_WRITES,
    _LIFECYCLE,
    """
local HEAD, ROW = 4, 4  -- rows.BackfillHead, rows.BackfillRow
local job_id, now_ms, prefix, runs_kept = unpack(ARGV, 1, HEAD)
local st = redis.call('HMGET', KEYS[1], 'status', 'recurring')
if not st[1] then return {'missing'} end
-- a cancel is never undone, and a schedule set aside runs no more (BEGIN_RUN would skip them)
if st[1] == 'cancelled' or st[1] == 'failed' or st[2] ~= '1' then return {'refused', st[1]} end
local added, inflight = {'ok'}, {}
for i = 1, (#ARGV - HEAD) / ROW do
  local at = HEAD + (i - 1) * ROW
  local run_id, nominal_ms, queue_key, message = unpack(ARGV, at + 1, at + ROW)
  local run = run_key(prefix, run_id)
  local status = redis.call('HGET', run, 'status')
  local known = status or redis.call('ZSCORE', KEYS[2], run_id)
  if not known or status == 'skipped' then
    redis.call('DEL', run)  -- a skipped slot's record: its reason no longer applies
    redis.call('HSET', run, 'job_id', job_id, 'nominal_ms', nominal_ms, 'status', 'queued',
      'attempts', 0, 'queued_ms', now_ms, 'manual', '1')
    redis.call('ZADD', KEYS[2], now_ms, run_id)
    push(queue_key, message)
    inflight[#inflight+1] = now_ms
    inflight[#inflight+1] = run_id
    added[#added+1] = run_id
  end
end
if #added > 1 then
  trim_runs(prefix, KEYS[2], runs_kept)
  -- runs are out: a finished schedule stays until they finish (FINISH_RUN retires it again)
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('ZREM', retired_key(prefix), job_id)
  add_all(KEYS[3], inflight)
  push_all()
end
return added
""",
)
BACKFILL_MAX_SLOTS = 1_000  # slots per backfill call (also at most runs_kept): bounds the script

# Beat: send a run's message again when it was lost (in no queue, held by no worker), only if
# the run has not moved since beat looked; a finished run just leaves the in-flight index.
# KEYS: run, inflight, queue   ARGV: run_id, now_ms, expected_status, expected_attempts, message
# Returns 1 when sent, 0 when not.
RESEND_RUN = """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if not st[1] or st[1] == 'completed' or st[1] == 'failed' or st[1] == 'skipped' or st[1] == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if st[1] ~= ARGV[3] or (st[2] or '0') ~= ARGV[4] then return 0 end
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[1], 'queued_ms', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# Beat: drop finished runs from the in-flight index, each only if it has not moved since beat
# read it (its score is still the one read): a run redriven or resent meanwhile stays watched.
# KEYS: inflight   ARGV: run_id, moved_ms, ... (pairs)
# Returns how many were dropped.
FORGET_RUNS = """
local dropped = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return dropped
"""

# Beat: take an in-flight run whose job can't be read out of flight (dead-lettered with the
# reason), only if it has not moved since beat read it. The job is then set aside (CHANGE_STATE).
# KEYS: run, inflight, dead, job   ARGV: run_id, moved_ms, why, now_ms, dead_retention_s
# Returns 1 when the run was set aside, 0 when it had moved. A job that left meanwhile is not
# written: the write would make a hash of two fields that nothing ever expires.
SET_ASIDE_RUN = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[3], 'finished_ms', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'last_error', ARGV[3], 'keep_s', ARGV[5])
end
return 1
"""

# Beat leadership. A new leader takes the next fencing token; CLAIM_DUE checks it.
# KEYS: beat_lock, beat_fence   ARGV: instance, ttl_ms
ACQUIRE_LOCK = """
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token}
"""

# KEYS: beat_lock   ARGV: token, ttl_ms ('0' releases)
RENEW_LOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# Beat: read a batch of due entries with what deciding them needs, in one round trip: a job's
# brief fields (jobfields.BRIEF), never its input (up to 256 KiB, plus a sealed copy).
# KEYS: due   ARGV: prefix, until_ms, limit
# Returns 8 per entry: member, due_ms, job_id, brief, runs_done, anchor_ms, version, traceparent
# (an r: entry's run's trace, '' when it has none). The brief is the fields packed (jobfields.py;
# an old record's 'brief' JSON), '' when the job is gone, and 'spec' .. '\\31' .. spec for a
# record written before briefs existed.
READ_DUE = _script(
    _KEYS,
    """
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local out = {}
-- one HMGET a job: on a listpack each name is a scan of the hash, each call a round of its own
local FIELDS = {'runs_done', 'anchor_ms', 'version', unpack(BRIEF_FIELDS)}
for i = 1, #rows, 2 do
  local member = rows[i]
  local id = string.sub(member, 3)
  local job_id, traceparent = id, false
  if string.sub(member, 1, 1) == 'r' then
    local run = redis.call('HMGET', run_key(ARGV[1], id), 'job_id', 'traceparent')
    job_id, traceparent = run[1] or '', run[2]
  end
  local st = {false, false, false, false}
  if job_id ~= '' then
    local job = job_key(ARGV[1], job_id)
    local got = redis.call('HMGET', job, unpack(FIELDS))
    st = {pack_from(FIELDS, got, 4), got[1], got[2], got[3]}
    if st[1] == '' and redis.call('EXISTS', job) == 1 then
      st[1] = 'spec\\31' .. (redis.call('HGET', job, 'spec') or '')
    end
  end
  out[#out+1] = member
  out[#out+1] = rows[i+1]
  out[#out+1] = job_id
  out[#out+1] = st[1] or ''
  out[#out+1] = st[2] or '0'
  out[#out+1] = st[3] or '0'
  out[#out+1] = st[4] or '0'
  out[#out+1] = traceparent or ''
end
return out
""",
)

# Worker or beat: a run whose record is gone although its job is not (see run_vanished).
# KEYS: none   ARGV: prefix, run_id, now_ms, job_retention_s, dead_retention_s
# Returns 1 when the run vanished (counted), 0 when it exists or its job left too.
RUN_GONE = _script(
    _LIFECYCLE,
    """
local prefix, run_id = ARGV[1], ARGV[2]
if redis.call('EXISTS', run_key(prefix, run_id)) == 1 then return 0 end
redis.call('ZREM', inflight_key(prefix), run_id)
return run_vanished(prefix, run_id, ARGV[3], ARGV[4], ARGV[5], 'runs_vanished')
""",
)

# Beat (leader): remove what left, with bounded work per call. Finished jobs whose retention
# passed go with their runs and index entries; dead letters past their retention or beyond the
# cap are deleted and counted; a slice of the jobs index (from `cursor`) is checked for entries
# whose record is gone (counted unless retired) and for finished jobs never retired.
# KEYS: retired, dead, jobs, stats
# ARGV: prefix, now_ms, limit, cursor, job_retention_s, dead_retention_s, dead_max
# Returns {jobs_expired, dead_dropped, retired, jobs_vanished, next_cursor}
SWEEP = _script(
    _LIFECYCLE,
    """
local prefix, now, limit, cursor = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do drop(prefix, id) end
if #expired > 0 then redis.call('HINCRBY', KEYS[4], 'jobs_expired', #expired) end

local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]) * 1000, 'LIMIT', 0, limit)
local over = redis.call('ZCARD', KEYS[2]) - #dead - tonumber(ARGV[7])
if over > 0 then dead = redis.call('ZRANGE', KEYS[2], 0, #dead + math.min(over, limit) - 1) end
for _, run_id in ipairs(dead) do
  redis.call('DEL', run_key(prefix, run_id))
  redis.call('ZREM', KEYS[2], run_id)
end
if #dead > 0 then redis.call('HINCRBY', KEYS[4], 'dead_dropped', #dead) end

local function paused_past_its_end(job, at)
  local end_ms = end_ms_of(job)
  return end_ms ~= nil and end_ms < at
end

local ids = redis.call('ZRANGE', KEYS[3], cursor, cursor + limit - 1)
local retired, vanished, removed = 0, 0, 0
for _, id in ipairs(ids) do
  local status = redis.call('HGET', job_key(prefix, id), 'status')
  local waiting = redis.call('ZSCORE', KEYS[1], id)
  if not status then
    -- gone before its retention ended (a retired job's TTL outlasts it): evicted or deleted
    if not waiting or tonumber(waiting) > now then vanished = vanished + 1 end
    drop(prefix, id)
    removed = removed + 1
  elseif FINISHED[status] and not waiting then
    retire(prefix, id, ARGV[5], now)
    retired = retired + 1
  elseif status == 'paused' and paused_past_its_end(job_key(prefix, id), now) then
    -- nothing is left to resume (resume would finish it): it is finished, and retires
    redis.call('HSET', job_key(prefix, id), 'status', 'completed', 'next_run_ms', '', 'updated_ms', now)
    retire(prefix, id, ARGV[5], now)
    retired = retired + 1
  end
end
if vanished > 0 then redis.call('HINCRBY', KEYS[4], 'jobs_vanished', vanished) end
local next_cursor = cursor + #ids - removed
if #ids < limit then next_cursor = 0 end
return {#expired, #dead, retired, vanished, next_cursor}
""",
)

# Producer: change a live job in place (job.update, or schedule() meeting its key or a twin with
# other settings), only if it is as the producer read it: same version (bumped here, and checked
# by CLAIM_DUE, so a claim beat decided from the old rule fails), status and runs_done (a claim
# that landed in between changes it: the producer reads again and plans anew). The job's runs
# and their history stay; the next run moves to what the new rule gives.
# KEYS: job, due
# ARGV: rows.UpdateJobArgs (next_run_ms '' = nothing left: the schedule completes; fp = the
# identity entry it should hold, key entry or fingerprint key, '' = none)
# Returns {'ok'}, {'moved', status}, {'refused', status} or {'missing'} (rows.Answered)
UPDATE_JOB = _script(
    _LIFECYCLE,
    """
local ARGS = 11  -- rows.UpdateJobArgs
local job_id, now_ms, version, runs_done, status, spec, next_run_ms, anchor_ms, fp, prefix,
  job_retention_s = unpack(ARGV, 1, ARGS)
local st = redis.call('HMGET', KEYS[1], 'status', 'runs_done', 'version', 'fp')
if not st[1] then return {'missing'} end
if st[1] ~= status or st[2] ~= runs_done or (st[3] or '0') ~= version then return {'moved', st[1]} end
if st[1] ~= 'scheduled' and st[1] ~= 'paused' then return {'refused', st[1]} end
put_spec(KEYS[1], spec)  -- a record in the layout before (spec and brief JSON) is rewritten too
redis.call('HSET', KEYS[1], 'next_run_ms', next_run_ms, 'anchor_ms', anchor_ms,
  'version', tonumber(version) + 1, 'updated_ms', now_ms)
local old_fp = st[4] or ''
if old_fp ~= fp then
  -- a new input gives a fingerprinted schedule a new identity: it moves to that entry, unless
  -- a live twin already holds it (then this job is found by its id alone)
  if old_fp ~= '' and redis.call('GET', old_fp) == job_id then redis.call('DEL', old_fp) end
  local holder = fp ~= '' and redis.call('GET', fp)
  if fp ~= '' and not (holder and redis.call('EXISTS', job_key(prefix, holder)) == 1) then
    redis.call('SET', fp, job_id)
  else
    fp = ''
  end
  redis.call('HSET', KEYS[1], 'fp', fp)
end
if next_run_ms == '' then
  -- nothing left under the new rule (its limit reached, its end passed): done
  redis.call('HSET', KEYS[1], 'status', 'completed')
  redis.call('ZREM', KEYS[2], 'j:' .. job_id)
  retire(prefix, job_id, job_retention_s, now_ms)
elseif st[1] == 'scheduled' then
  redis.call('ZADD', KEYS[2], next_run_ms, 'j:' .. job_id)
end
return {'ok'}
""",
)
