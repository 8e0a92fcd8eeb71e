//! Hand-written conversions between openraft's types and the peer protocol
//! (`raftpb`). Explicit field by field, so the wire format (and the log on disk, which
//! stores `raftpb.Entry`) never changes behind our back when openraft does.

use std::collections::{BTreeMap, BTreeSet};

use capstan_proto::raftpb as rpb;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use super::{Member, TypeConfig};
use crate::error::{Result, StoreError};

type C = TypeConfig;

fn missing(what: &str) -> StoreError {
    StoreError::InvalidArgument(format!("raft message without {what}"))
}

pub fn log_id_to_pb(l: &LogId<u64>) -> rpb::LogId {
    rpb::LogId {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    }
}

pub fn log_id_from_pb(l: &rpb::LogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(l.term, l.node_id), l.index)
}

pub fn opt_log_id_to_pb(l: &Option<LogId<u64>>) -> Option<rpb::LogId> {
    l.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(l: &Option<rpb::LogId>) -> Option<LogId<u64>> {
    l.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote<u64>) -> rpb::Vote {
    rpb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: &rpb::Vote) -> Vote<u64> {
    Vote {
        leader_id: LeaderId::new(v.term, v.node_id),
        committed: v.committed,
    }
}

fn req_vote(v: &Option<rpb::Vote>) -> Result<Vote<u64>> {
    v.as_ref().map(vote_from_pb).ok_or_else(|| missing("vote"))
}

pub fn membership_to_pb(m: &Membership<u64, Member>) -> rpb::Membership {
    rpb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| rpb::VoterSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| rpb::Member {
                id: *id,
                name: n.name.clone(),
                peer_urls: n.peer_urls.clone(),
            })
            .collect(),
    }
}

pub fn membership_from_pb(m: &rpb::Membership) -> Membership<u64, Member> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|s| s.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, Member> = m
        .nodes
        .iter()
        .map(|n| {
            (
                n.id,
                Member {
                    name: n.name.clone(),
                    peer_urls: n.peer_urls.clone(),
                },
            )
        })
        .collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership_from_pb(
    log_id: &Option<rpb::LogId>,
    m: &Option<rpb::Membership>,
) -> StoredMembership<u64, Member> {
    StoredMembership::new(
        opt_log_id_from_pb(log_id),
        m.as_ref().map(membership_from_pb).unwrap_or_default(),
    )
}

pub fn entry_to_pb(e: &Entry<C>) -> rpb::Entry {
    use rpb::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(rpb::Blank {}),
        EntryPayload::Normal(p) => Payload::Normal(p.clone()),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    rpb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: rpb::Entry) -> Result<Entry<C>> {
    use rpb::entry::Payload;
    let log_id = e
        .log_id
        .as_ref()
        .map(log_id_from_pb)
        .ok_or_else(|| missing("entry log id"))?;
    let payload = match e.payload.ok_or_else(|| missing("entry payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(p) => EntryPayload::Normal(p),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)),
    };
    Ok(Entry { log_id, payload })
}

pub fn append_req_to_pb(r: AppendEntriesRequest<C>) -> rpb::AppendEntriesRequest {
    rpb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(&r.prev_log_id),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(&r.leader_commit),
    }
}

pub fn append_req_from_pb(r: rpb::AppendEntriesRequest) -> Result<AppendEntriesRequest<C>> {
    Ok(AppendEntriesRequest {
        vote: req_vote(&r.vote)?,
        prev_log_id: opt_log_id_from_pb(&r.prev_log_id),
        entries: r
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_>>()?,
        leader_commit: opt_log_id_from_pb(&r.leader_commit),
    })
}

pub fn append_resp_to_pb(r: &AppendEntriesResponse<u64>) -> rpb::AppendEntriesResponse {
    use rpb::append_entries_response::Kind;
    let (kind, matching, vote) = match r {
        AppendEntriesResponse::Success => (Kind::Success, None, None),
        AppendEntriesResponse::PartialSuccess(m) => {
            (Kind::PartialSuccess, opt_log_id_to_pb(m), None)
        }
        AppendEntriesResponse::Conflict => (Kind::Conflict, None, None),
        AppendEntriesResponse::HigherVote(v) => (Kind::HigherVote, None, Some(vote_to_pb(v))),
    };
    rpb::AppendEntriesResponse {
        kind: kind as i32,
        matching,
        vote,
    }
}

pub fn append_resp_from_pb(r: &rpb::AppendEntriesResponse) -> Result<AppendEntriesResponse<u64>> {
    use rpb::append_entries_response::Kind;
    let kind = Kind::try_from(r.kind)
        .map_err(|_| StoreError::InvalidArgument(format!("unknown append result {}", r.kind)))?;
    Ok(match kind {
        Kind::Success => AppendEntriesResponse::Success,
        Kind::PartialSuccess => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&r.matching))
        }
        Kind::Conflict => AppendEntriesResponse::Conflict,
        Kind::HigherVote => AppendEntriesResponse::HigherVote(req_vote(&r.vote)?),
    })
}

pub fn vote_req_to_pb(r: &VoteRequest<u64>) -> rpb::VoteRequest {
    rpb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
    }
}

pub fn vote_req_from_pb(r: &rpb::VoteRequest) -> Result<VoteRequest<u64>> {
    Ok(VoteRequest {
        vote: req_vote(&r.vote)?,
        last_log_id: opt_log_id_from_pb(&r.last_log_id),
    })
}

pub fn vote_resp_to_pb(r: &VoteResponse<u64>) -> rpb::VoteResponse {
    rpb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
    }
}

pub fn vote_resp_from_pb(r: &rpb::VoteResponse) -> Result<VoteResponse<u64>> {
    Ok(VoteResponse {
        vote: req_vote(&r.vote)?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from_pb(&r.last_log_id),
    })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta<u64, Member>) -> rpb::SnapshotMeta {
    rpb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership_log_id: opt_log_id_to_pb(m.last_membership.log_id()),
        last_membership: Some(membership_to_pb(m.last_membership.membership())),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(m: &rpb::SnapshotMeta) -> SnapshotMeta<u64, Member> {
    SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id),
        last_membership: stored_membership_from_pb(&m.last_membership_log_id, &m.last_membership),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_req_to_pb(r: &InstallSnapshotRequest<C>) -> rpb::InstallSnapshotRequest {
    rpb::InstallSnapshotRequest {
        vote: Some(vote_to_pb(&r.vote)),
        meta: Some(snapshot_meta_to_pb(&r.meta)),
        offset: r.offset,
        data: r.data.clone(),
        done: r.done,
    }
}

pub fn snapshot_req_from_pb(r: rpb::InstallSnapshotRequest) -> Result<InstallSnapshotRequest<C>> {
    Ok(InstallSnapshotRequest {
        vote: req_vote(&r.vote)?,
        meta: snapshot_meta_from_pb(r.meta.as_ref().ok_or_else(|| missing("snapshot meta"))?),
        offset: r.offset,
        data: r.data,
        done: r.done,
    })
}

pub fn snapshot_resp_from_pb(
    r: &rpb::InstallSnapshotResponse,
) -> Result<InstallSnapshotResponse<u64>> {
    Ok(InstallSnapshotResponse {
        vote: req_vote(&r.vote)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn entries_round_trip_through_the_wire_format() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 7), 42);
        let mut nodes = BTreeMap::new();
        nodes.insert(
            7,
            Member {
                name: "n1".into(),
                peer_urls: vec!["http://127.0.0.1:1".into()],
            },
        );
        let m = Membership::new(vec![[7u64].into_iter().collect()], nodes);
        let entries = vec![
            Entry::<C> {
                log_id,
                payload: EntryPayload::Blank,
            },
            Entry::<C> {
                log_id,
                payload: EntryPayload::Normal(rpb::Proposal {
                    member: 7,
                    seq: 9,
                    request: vec![1, 2, 3],
                    items: vec![rpb::ProposalItem {
                        seq: 10,
                        request: vec![4],
                        member: 8,
                    }],
                }),
            },
            Entry::<C> {
                log_id,
                payload: EntryPayload::Membership(m.clone()),
            },
        ];
        for e in entries {
            let bytes = entry_to_pb(&e).encode_to_vec();
            let back = entry_from_pb(rpb::Entry::decode(bytes.as_slice()).expect("decodes"))
                .expect("converts");
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
        let v = Vote::new_committed(5, 7);
        assert_eq!(vote_from_pb(&vote_to_pb(&v)), v);
    }
}
