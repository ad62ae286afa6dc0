//! The log store against openraft's own storage test suite, plus what the suite does not
//! cover: several groups in one database, and a reopen (what a crash leaves).

use super::*;
use crate::cluster::testing::MemoryMachine;
use crate::cluster::types::Proposal;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload};

/// Each build: a fresh database, group 7 of it (other groups' keys around it would show up
/// if a range were wrong: group 6 and 8 hold entries of their own).
struct Builder;

impl StoreBuilder<GroupConfig, GroupLog, MemoryMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, GroupLog, MemoryMachine)> {
        let dir = tempfile::tempdir().map_err(write_err)?;
        let logs = RaftLogs::open(dir.path()).map_err(write_err)?;
        for neighbour in [GroupId(6), GroupId(8)] {
            let mut log = logs.group(neighbour);
            log.save_vote(&Vote::new(9, 9)).await?;
            let entries = (0..30).map(|i| entry(9, i));
            let mut batch = logs.inner.db.batch();
            for e in entries {
                let bytes = postcard::to_allocvec(&e).map_err(write_err)?;
                batch.insert(&logs.inner.log, entry_key(neighbour, e.log_id.index), bytes);
            }
            batch.commit().map_err(write_err)?;
        }
        Ok((dir, logs.group(GroupId(7)), MemoryMachine::default()))
    }
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal(vec![term as u8, index as u8])),
    }
}

#[test]
fn passes_openrafts_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}

/// What was appended (and synced) and the vote survive closing the database, as a crash
/// leaves it; another group's truncation and purge leave this one alone.
#[test]
fn entries_and_vote_survive_a_reopen_and_groups_stay_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        {
            let logs = RaftLogs::open(dir.path()).expect("open");
            for g in [GroupId(1), GroupId(2)] {
                let mut log = logs.group(g);
                log.save_vote(&Vote::new(3, u64::from(g.0)))
                    .await
                    .expect("vote");
                let mut batch = logs.inner.db.batch();
                for i in 1..=10 {
                    let e = entry(3, i);
                    let bytes = postcard::to_allocvec(&e).expect("encode");
                    batch.insert(&logs.inner.log, entry_key(g, i), bytes);
                }
                batch.commit().expect("commit");
                log.sync().await.expect("sync");
            }
            let mut two = logs.group(GroupId(2));
            two.truncate(LogId::new(CommittedLeaderId::new(3, 1), 6))
                .await
                .expect("truncate");
            two.purge(LogId::new(CommittedLeaderId::new(3, 1), 2))
                .await
                .expect("purge");
        }
        let logs = RaftLogs::open(dir.path()).expect("reopen");
        let mut one = logs.group(GroupId(1));
        assert_eq!(one.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
        let entries = one.try_get_log_entries(0..100).await.expect("read");
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            entries[4].payload,
            EntryPayload::Normal(Proposal(vec![3, 5]))
        );
        let mut two = logs.group(GroupId(2));
        let state = two.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        let entries = two.try_get_log_entries(..).await.expect("read");
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    });
}
