//! `celery-operator observe`: reads a broker (and, with `--flower`, a Flower) once and prints,
//! as JSON, the figures the host would hand a policy, so that a user can check what the
//! operator sees.
//!
//! The entries of `queues` have the shape of a policy's `current.queues` (`name`, `backlog`,
//! `reserved`, `consumers`). A `null` is a figure that could not be measured; with a `null`
//! backlog the loop does not call the policy at all, it holds the replica count. `workers` are
//! Flower's workers: `active` is what a pod named after the worker's hostname gets as its
//! `active-tasks`. Without `--broker`, the queues are read through Flower, as the loop does for
//! an app that names no broker.

use std::time::Duration;

use serde::Serialize;

use super::flower::{Flower, WorkerLoad};
use super::{BrokerError, BrokerOptions, QueueStats, RedisLayout, connect};
use crate::policy::QueueSample;

/// One reading of an app's queues.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// The broker, without its password; absent when the queues were read through Flower.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Flower, without its password, when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flower: Option<String>,
    pub queues: Vec<QueueStats>,
    /// Flower's workers, when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<WorkerLoad>>,
}

impl Observation {
    /// The queues as a policy receives them, or `None` if a backlog is unknown (no policy call).
    pub fn policy_queues(&self) -> Option<Vec<QueueSample>> {
        self.queues.iter().map(QueueStats::to_sample).collect()
    }
}

/// Reads the named queues of one broker once.
pub async fn observe(broker_url: &str, queues: &[String], options: &BrokerOptions) -> Result<Observation, BrokerError> {
    let broker = connect(broker_url, options)?;
    let stats = broker.queues(queues).await?;
    Ok(Observation { broker: Some(broker.display_url().to_string()), flower: None, queues: stats, workers: None })
}

/// Arguments of `celery-operator observe`.
#[derive(clap::Args, Debug, Clone)]
pub struct ObserveArgs {
    /// The broker URL, as given to Celery: redis://, rediss://, redis+socket://, amqp://, amqps://.
    /// Without it, the queues are read through `--flower`.
    #[arg(long, env = "CELERY_BROKER_URL", required_unless_present = "flower")]
    pub broker: Option<String>,
    /// Flower, e.g. http://user:password@flower:5555: also print its workers and the tasks
    /// each has in progress.
    #[arg(long)]
    pub flower: Option<String>,
    /// Queues to read (Celery's default queue is `celery`).
    #[arg(long = "queue", value_name = "NAME", num_args = 1.., default_value = "celery")]
    pub queues: Vec<String>,
    /// RabbitMQ management API, e.g. http://user:password@rabbitmq:15672 (default: the AMQP
    /// host on port 15672, or 15671 with amqps://, with the AMQP URL's credentials).
    #[arg(long)]
    pub management_url: Option<String>,
    /// Seconds to wait for the broker before its figures are unknown.
    #[arg(long, default_value_t = 2.0)]
    pub timeout: f64,
    /// kombu's `sep` transport option (Redis priority lists).
    #[arg(long, default_value = "\x06\x16", hide_default_value = true)]
    pub sep: String,
    /// kombu's `priority_steps` transport option (Redis priority lists).
    #[arg(long, value_delimiter = ',', default_value = "0,3,6,9")]
    pub priority_steps: Vec<u32>,
    /// kombu's `global_keyprefix` transport option (Redis).
    #[arg(long, default_value = "")]
    pub global_keyprefix: String,
    /// kombu's `unacked_key` transport option (Redis).
    #[arg(long, default_value = "unacked")]
    pub unacked_key: String,
}

/// Runs `celery-operator observe`: one reading, printed as JSON on stdout.
pub async fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let ObserveArgs { broker, flower, queues, management_url, timeout, sep, priority_steps, global_keyprefix, unacked_key } =
        args;
    if !(timeout.is_finite() && timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds, not {timeout}");
    }
    let options = BrokerOptions {
        timeout: Duration::from_secs_f64(timeout),
        redis: RedisLayout { sep, priority_steps, global_keyprefix, unacked_key },
        management_url,
    };
    let mut observation = match &broker {
        Some(broker) => observe(broker, &queues, &options).await?,
        None => Observation { broker: None, flower: None, queues: Vec::new(), workers: None },
    };
    if let Some(url) = flower {
        let flower = Flower::new(&url, None, options.timeout)?;
        if broker.is_none() {
            observation.queues = flower.queues(&queues).await?;
        }
        observation.workers = Some(flower.workers().await?);
        observation.flower = Some(flower.display_url().to_string());
    }
    println!("{}", serde_json::to_string_pretty(&observation)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ObserveArgs,
    }

    #[test]
    fn defaults_are_kombus() {
        let cli = Cli::try_parse_from(["observe", "--broker", "redis://r/0"]).expect("parses");
        assert_eq!(cli.args.queues, ["celery"]);
        assert_eq!(cli.args.sep, "\x06\x16");
        assert_eq!(cli.args.priority_steps, [0, 3, 6, 9]);
        let cli = Cli::try_parse_from(["observe", "--broker", "redis://r/0", "--queue", "a", "b", "--priority-steps", "0,1,2"])
            .expect("parses");
        assert_eq!(cli.args.queues, ["a", "b"]);
        assert_eq!(cli.args.priority_steps, [0, 1, 2]);
        assert!(
            Cli::try_parse_from(["observe"]).is_err() || std::env::var_os("CELERY_BROKER_URL").is_some(),
            "a source is required"
        );
        let cli = Cli::try_parse_from(["observe", "--flower", "http://f:5555"]).expect("Flower alone will do");
        assert_eq!(cli.args.flower.as_deref(), Some("http://f:5555"));
    }

    #[test]
    fn policy_queues_need_every_backlog() {
        let mut observation = Observation {
            broker: Some("redis://r/0".into()),
            flower: None,
            queues: vec![QueueStats { name: "a".into(), backlog: Some(2), reserved: Some(1), consumers: None }],
            workers: None,
        };
        let json = serde_json::to_value(&observation).expect("serialises");
        assert_eq!(json["queues"][0], serde_json::json!({"name": "a", "backlog": 2, "reserved": 1, "consumers": null}));
        assert_eq!(observation.policy_queues().map(|q| q.len()), Some(1));
        observation.queues.push(QueueStats::unknown("b"));
        assert_eq!(observation.policy_queues(), None);
    }
}
