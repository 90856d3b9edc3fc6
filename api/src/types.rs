//! The objects of a skiff cluster and the messages the scheduler, nodes and CLI
//! exchange, in one namespace. Everything here is serialised as JSON on the wire;
//! field names are part of the API. The definitions live by concern: `spec`
//! (what a deployment asks for), `objects` (what the cluster holds and shows) and
//! `messages` (request and answer bodies).

pub use crate::job::{
    ConcurrencyPolicy, Cron, CronDetail, CronHistory, CronSpec, Job, JobDetail, JobRun, JobSpec, JobState, RunOutcome,
};
pub use crate::messages::*;
pub use crate::objects::*;
pub use crate::spec::*;
