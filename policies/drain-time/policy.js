// `drain-time`: the fewest workers that empty the backlog within `seconds`.
//
// From the history window (oldest first) and the current sample, each interval between two
// samples gives the net change of the backlog per second with the replicas of that time:
//     net = arrivals − perWorker × replicas
// A least-squares fit over the intervals (weighted by their length) gives the arrival rate and
// the per-worker throughput when the replica count varied; with a constant count, a draining
// backlog bounds the throughput from below. Then
//     desired = ceil((backlog / seconds + arrivals) / perWorker)
// Built with componentize-js with every WASI feature disabled (see ../build.sh): no clock, no
// randomness, no stdio; the input is all it sees. u64 fields arrive as BigInt.
//
// The window comes as columns from the contract's `window` interface, not as the records of
// `input.history` (its NAME.json says "history": 0): three typed arrays instead of a minute of
// sample objects, which cost several times the decision to build.
import { timestampsMs, replicas as replicasColumn, backlog as backlogColumn } from 'celery:autoscaler/window@0.1.1';

const DEFAULT_SECONDS = 60;
const U32_MAX = 4294967295;

class PolicyError extends Error {
  constructor(message) {
    super(message);
    // componentize-js turns a thrown object with `payload` into the `err` case of the result.
    this.payload = message;
  }
}

function parseSettings(settings) {
  const s = { seconds: DEFAULT_SECONDS, workerRate: null };
  for (const [key, raw] of settings) {
    const value = raw.trim();
    if (key === 'seconds') {
      if (!/^[0-9]+$/.test(value) || Number(value) < 1) {
        throw new PolicyError(`setting seconds: must be a whole number of seconds, at least 1, got ${JSON.stringify(raw)}`);
      }
      s.seconds = Number(value);
    } else if (key === 'workerRate') {
      const n = Number(value);
      if (value === '' || !Number.isFinite(n) || n <= 0) {
        throw new PolicyError(`setting workerRate: must be a positive number of messages per second, got ${JSON.stringify(raw)}`);
      }
      s.workerRate = n;
    } else {
      throw new PolicyError(`setting ${key}: unknown (known: seconds, workerRate)`);
    }
  }
  return s;
}

function backlogOf(sample) {
  let total = 0;
  for (const q of sample.queues) total += Number(q.backlog);
  return total;
}

function fmt(x) {
  return x >= 10 ? x.toFixed(0) : x.toFixed(1);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function workers(n) {
  return plural(n, 'worker');
}

// Intervals between consecutive samples of the window (columns, oldest first, the current
// sample last), skipping those where the queue stayed empty: an empty queue says the workers
// kept up, not how fast they could go. Parallel typed arrays, not an object per interval: in
// a fresh interpreter every object costs, and this is most of the decision's own work.
function intervals(t, r, b) {
  const n = t.length;
  const dt = new Float64Array(n);
  const net = new Float64Array(n);
  const rep = new Float64Array(n);
  let m = 0;
  let tPrev = Number(t[0]);
  let bPrev = Number(b[0]);
  for (let i = 1; i < n; i++) {
    const ti = Number(t[i]);
    const bi = Number(b[i]);
    const d = (ti - tPrev) / 1000;
    if (d > 0 && !(bPrev === 0 && bi === 0)) {
      dt[m] = d;
      net[m] = (bi - bPrev) / d;
      rep[m] = r[i - 1];
      m++;
    }
    tPrev = ti;
    bPrev = bi;
  }
  return { dt, net, rep, length: m };
}

// Returns { arrivals, perWorker, how } or null when the window cannot tell.
function estimate(iv, workerRate) {
  const { dt, net, rep, length } = iv;
  let w = 0;
  let sumR = 0;
  let sumNet = 0;
  for (let i = 0; i < length; i++) {
    w += dt[i];
    sumR += dt[i] * rep[i];
    sumNet += dt[i] * net[i];
  }
  const meanR = sumR / w;
  const meanNet = sumNet / w;
  let varR = 0;
  let cov = 0;
  for (let i = 0; i < length; i++) {
    const dr = rep[i] - meanR;
    varR += dt[i] * dr * dr;
    cov += dt[i] * dr * (net[i] - meanNet);
  }
  if (varR > 0) {
    const perWorker = -cov / varR;
    if (perWorker > 0) {
      return { arrivals: Math.max(0, meanNet + perWorker * meanR), perWorker, how: 'fitted' };
    }
  }
  if (workerRate !== null) {
    return { arrivals: Math.max(0, meanNet + workerRate * meanR), perWorker: workerRate, how: 'workerRate setting' };
  }
  if (meanNet < 0 && meanR > 0) {
    // Draining with no replica change: assuming nothing arrived gives the lowest throughput
    // that explains the drop, so the answer errs towards more workers.
    return { arrivals: 0, perWorker: -meanNet / meanR, how: 'drain rate' };
  }
  return null;
}

function decide(input) {
  const s = parseSettings(input.settings);
  const t = timestampsMs();
  const samples = t.length;
  const backlog = backlogOf(input.current);
  const current = input.currentReplicas;
  const iv = intervals(t, replicasColumn(), backlogColumn());

  if (iv.length === 0) {
    if (backlog === 0) {
      return { replicas: 0, reason: `queues empty across ${plural(samples, 'sample')} → 0 workers` };
    }
    const n = Math.max(current, 1);
    return { replicas: n, reason: `${backlog} messages but too little history to estimate rates (${plural(samples, 'sample')}) → holding ${workers(n)}` };
  }

  const est = estimate(iv, s.workerRate);
  if (est === null) {
    // The backlog grew or held with a constant replica count: more workers are needed, but
    // the window cannot say how many, so add one at a time.
    const n = backlog === 0 ? current : Math.min(current + 1, U32_MAX);
    return { replicas: n, reason: `${backlog} messages, not draining at ${workers(current)}, throughput unknown (no replica change in the window) → ${workers(n)}` };
  }

  const wanted = Math.ceil((backlog / s.seconds + est.arrivals) / est.perWorker - 1e-9);
  const n = Math.max(0, Math.min(U32_MAX, wanted));
  return {
    replicas: n,
    reason: `${backlog} messages, ${fmt(est.arrivals)}/s arriving, ${fmt(est.perWorker)}/s per worker (${est.how}, ${plural(iv.length, 'interval')}) → ${workers(n)} to drain in ${s.seconds}s`,
  };
}

export const policy = {
  decide(input) {
    return decide(input);
  },
  validateSettings(settings) {
    parseSettings(settings);
  },
};
