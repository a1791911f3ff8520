//! What the agent says about itself after every CONNACK, and in what order: one SUBSCRIBE (its
//! command topics, then its own status topic), then presence, every output state, every input
//! state and the latest sensor readings. rumqttc restores neither subscriptions nor state, and a
//! broker that restarts forgets retained messages it kept only in memory, so all of it is said
//! again each time. Also here: reading the SUBACK that answers that SUBSCRIBE.

use pifleet_proto::payload::{Presence, PresenceState};
use pifleet_proto::{Name, Target, Topic, Topics};
use rumqttc::{QoS, SubscribeFilter, SubscribeReasonCode};

use crate::message::Message;
use crate::state::AgentState;

/// The filters of the SUBSCRIBE after a CONNACK, each at QoS 1: the device's own command topic,
/// its groups', the fleet's, then its own status topic (see `on_own_status` in
/// [`AgentState`]: the agent corrects a stale "offline" about itself).
pub fn subscriptions(topics: &Topics, device: &Name, groups: &[Name]) -> Vec<SubscribeFilter> {
    topics
        .agent_subscriptions(device, groups)
        .into_iter()
        .chain([topics.status(device)])
        .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce))
        .collect()
}

/// This device's presence, stamped now.
pub fn presence(agent: &AgentState, state: PresenceState) -> Presence {
    Presence {
        state,
        version: Some(pifleet_proto::VERSION.to_string()),
        groups: agent.groups().to_vec(),
        outputs: agent.outputs().iter().map(|o| o.name.clone()).collect(),
        dimmable: agent
            .outputs()
            .iter()
            .filter(|o| o.dimmable)
            .map(|o| o.name.clone())
            .collect(),
        inputs: agent.inputs().iter().map(|i| i.name.clone()).collect(),
        sensors: agent.sensors().iter().map(|s| s.name.clone()).collect(),
        intervals: agent
            .sensors()
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.interval_secs?)))
            .collect(),
        started_at: Some(agent.started_at()),
        ts: Some(agent.now()),
    }
}

/// Everything retained the agent knows, in the order it is republished: presence `online`,
/// every output, every input, then the sensors that have a reading.
pub fn republish(agent: &AgentState) -> Vec<Message> {
    let wire = agent.wire();
    let presence = wire.status(&presence(agent, PresenceState::Online));
    let outputs = agent
        .outputs()
        .iter()
        .map(|o| wire.output(&o.name, &o.state));
    let inputs = agent.inputs().iter().map(|i| wire.input(&i.name, &i.state));
    let sensors = agent
        .sensors()
        .iter()
        .filter_map(|s| Some(wire.sensor(&s.name, s.last.as_ref()?)));
    [presence]
        .into_iter()
        .chain(outputs)
        .chain(inputs)
        .chain(sensors)
        .collect()
}

/// The filters a SUBACK refused: its return codes answer the SUBSCRIBE's filters one by one,
/// in order (MQTT 3.1.1, 3.9.3). `Err` when the counts differ, i.e. the SUBACK cannot be for
/// that SUBSCRIBE.
pub(crate) fn refused_filters<'a>(
    filters: &'a [String],
    codes: &[SubscribeReasonCode],
) -> Result<Vec<&'a str>, ()> {
    if filters.len() != codes.len() {
        return Err(());
    }
    Ok(filters
        .iter()
        .zip(codes)
        .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
        .map(|(f, _)| f.as_str())
        .collect())
}

/// One sentence on a refused subscription, naming the group when it is a group's commands
/// (the usual cause: the device's credentials list other groups than its config).
pub fn refusal_sentence(topics: &Topics, device: &Name, filter: &str) -> String {
    match topics.parse(filter) {
        Some(Topic::Command(Target::Group(group))) => format!(
            "broker refused subscription to group '{group}' ({filter}): check the device's \
             groups in the broker's credentials"
        ),
        _ => format!(
            "broker refused subscription to {filter}: check what the broker allows device \
             '{device}'"
        ),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn the_subscription_is_own_commands_groups_fleet_then_own_status_at_qos_1() {
        let topics = Topics::new("pifleet").unwrap();
        let filters = subscriptions(&topics, &n("k"), &[n("downstairs"), n("lights")]);
        let shown: Vec<_> = filters.iter().map(|f| (f.path.as_str(), f.qos)).collect();
        let q1 = QoS::AtLeastOnce;
        assert_eq!(
            shown,
            vec![
                ("pifleet/dev/k/cmnd", q1),
                ("pifleet/group/downstairs/cmnd", q1),
                ("pifleet/group/lights/cmnd", q1),
                ("pifleet/all/cmnd", q1),
                ("pifleet/dev/k/cmnd/+", q1),
                ("pifleet/dev/k/cmnd/+/level", q1),
                ("pifleet/dev/k/status", q1),
            ]
        );
    }

    #[test]
    fn suback_codes_map_to_the_filters_in_the_order_subscribed() {
        let filters: Vec<String> = [
            "pifleet/dev/k/cmnd",
            "pifleet/group/downstairs/cmnd",
            "pifleet/group/upstairs/cmnd",
            "pifleet/all/cmnd",
        ]
        .map(String::from)
        .into();
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        let no = SubscribeReasonCode::Failure;
        assert_eq!(
            refused_filters(&filters, &[ok, ok, no, ok]),
            Ok(vec!["pifleet/group/upstairs/cmnd"])
        );
        assert_eq!(
            refused_filters(&filters, &[no, ok, ok, no]),
            Ok(vec!["pifleet/dev/k/cmnd", "pifleet/all/cmnd"])
        );
        assert_eq!(refused_filters(&filters, &[ok; 4]), Ok(vec![]));
        // A granted QoS lower than asked for is still granted.
        let qos0 = SubscribeReasonCode::Success(QoS::AtMostOnce);
        assert_eq!(refused_filters(&filters, &[qos0; 4]), Ok(vec![]));
        assert_eq!(refused_filters(&filters, &[no, no]), Err(()));
    }

    #[test]
    fn a_refused_group_subscription_is_a_sentence_naming_the_group() {
        let topics = Topics::new("pifleet").unwrap();
        assert_eq!(
            refusal_sentence(&topics, &n("k"), "pifleet/group/upstairs/cmnd"),
            "broker refused subscription to group 'upstairs' (pifleet/group/upstairs/cmnd): \
             check the device's groups in the broker's credentials"
        );
        assert_eq!(
            refusal_sentence(&topics, &n("k"), "pifleet/all/cmnd"),
            "broker refused subscription to pifleet/all/cmnd: check what the broker allows \
             device 'k'"
        );
    }
}
