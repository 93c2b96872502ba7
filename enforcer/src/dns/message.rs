//! DNS messages as isolate's resolver sees them: the instance's question, the replies the
//! resolver makes itself (REFUSED, SERVFAIL, FORMERR), the query it sends upstream, and what an
//! upstream answer tells the allowlist. Parsing goes through hickory-proto; the messages the
//! resolver writes are only a header, the question and perhaps an OPT record, so they are
//! encoded here by hand and cannot fail.

use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{self, Message, MessageType, OpCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// The UDP payload the resolver advertises: DNS Flag Day 2020's size, which avoids IP
/// fragmentation (and the spoofing it allows).
const EDNS_PAYLOAD: u16 = 1232;
/// The smallest payload EDNS allows (RFC 6891).
const MIN_PAYLOAD: u16 = 512;
/// CNAME hops followed in one answer; real chains are a few hops long.
const MAX_CNAME_HOPS: usize = 16;
const HEADER_LEN: usize = 12;

// Header bits: third byte, then fourth byte.
const QR: u8 = 0x80;
const OPCODE: u8 = 0x78;
const RD: u8 = 0x01;
const RA: u8 = 0x80;
const CD: u8 = 0x10;
/// The DNSSEC OK bit of the OPT record's flags.
const DO: u16 = 0x8000;

const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const REFUSED: u8 = 5;

/// One question asked by the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower case, without the trailing dot ("api.example.com").
    pub name: String,
    /// The record type as DNS writes it: "A", "AAAA", "TXT", or "TYPE65" for unknown ones.
    pub record_type: String,
    /// Whether it asks for addresses (A or AAAA).
    pub asks_addresses: bool,
    /// The question as asked, the name in its own case: replies echo it exactly (clients that
    /// randomise the case, "0x20", check it).
    question: op::Query,
    recursion_desired: bool,
    checking_disabled: bool,
    /// What the instance offered in EDNS: a reply carries OPT only if the query did (RFC 6891).
    edns: Option<Edns>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edns {
    payload: u16,
    dnssec_ok: bool,
}

/// What the upstream answered, as far as the allowlist cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub truncated: bool,
    /// The response code, as DNS writes it ("NOERROR", "NXDOMAIN", ...).
    pub code: String,
    /// Addresses of the name asked, CNAME chains followed within the answer section:
    /// (address, TTL seconds). Only A/AAAA records whose owner name is the query name or a name
    /// the chain reached; records about other names (an upstream trying to inject) are ignored.
    pub addresses: Vec<(IpAddr, u32)>,
    /// The CNAME targets the chain went through, in order (lower case, no trailing dot).
    pub aliases: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("malformed DNS message")]
    Malformed(#[from] ProtoError),
    #[error("a DNS response where a query was expected")]
    NotAQuery,
    #[error("DNS opcode {0} where QUERY was expected")]
    Opcode(u8),
    #[error("{0} questions in a DNS query, expected exactly one")]
    Questions(usize),
    #[error("a DNS query where a response was expected")]
    NotAResponse,
    #[error("the DNS answer is not about the question asked")]
    QuestionMismatch,
}

/// Reads the instance's query: a standard query with exactly one question.
pub fn parse_query(bytes: &[u8]) -> Result<Query, MessageError> {
    let message = Message::from_vec(bytes)?;
    if message.message_type() != MessageType::Query {
        return Err(MessageError::NotAQuery);
    }
    if message.op_code() != OpCode::Query {
        return Err(MessageError::Opcode(message.op_code().into()));
    }
    let [question] = message.queries() else {
        return Err(MessageError::Questions(message.queries().len()));
    };
    let record_type = question.query_type();
    Ok(Query {
        id: message.id(),
        name: presentation(question.name()),
        record_type: type_name(record_type),
        asks_addresses: matches!(record_type, RecordType::A | RecordType::AAAA),
        question: question.clone(),
        recursion_desired: message.recursion_desired(),
        checking_disabled: message.checking_disabled(),
        edns: message.extensions().as_ref().map(|edns| Edns {
            payload: edns.max_payload(),
            dnssec_ok: edns.flags().dnssec_ok,
        }),
    })
}

/// A FORMERR reply to a message that is not a query isolate answers, when at least its header
/// can be read. Never to a response: two servers answering each other's errors would loop.
pub fn format_error(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = bytes.get(..HEADER_LEN)?;
    if header[2] & QR != 0 {
        return None;
    }
    let mut reply = Vec::with_capacity(HEADER_LEN);
    reply.extend_from_slice(&header[..2]);
    reply.push(QR | (header[2] & (OPCODE | RD)));
    reply.push(RA | FORMERR);
    reply.extend_from_slice(&[0; 8]);
    Some(reply)
}

/// The reply to a name the policy does not allow.
pub fn refused(query: &Query) -> Vec<u8> {
    reply(query, REFUSED)
}

/// The reply when the upstream could not be reached or answered nonsense.
pub fn servfail(query: &Query) -> Vec<u8> {
    reply(query, SERVFAIL)
}

/// Re-encodes the upstream's answer with the instance's query id (the forwarder uses its own ids
/// upstream).
pub fn with_id(answer: &[u8], id: u16) -> Vec<u8> {
    let mut answer = answer.to_vec();
    if let Some(first) = answer.get_mut(..2) {
        first.copy_from_slice(&id.to_be_bytes());
    }
    answer
}

/// The id of an upstream message, if it has a whole header.
pub fn answer_id(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [high, low, _, _, _, _, _, _, _, _, _, _, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// The query to send upstream: the instance's question under a new id, RD set. Only the
/// payload size and the DO bit of the instance's EDNS go along, none of its options.
pub fn upstream_query(query: &Query, id: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let edns = query.edns.map(|edns| Edns {
        payload: edns.payload.clamp(MIN_PAYLOAD, EDNS_PAYLOAD),
        ..edns
    });
    write_header(&mut out, id, [RD, cd(query)], edns.is_some());
    write_question(&mut out, &query.question);
    if let Some(edns) = edns {
        write_opt(&mut out, edns);
    }
    out
}

/// Reads the upstream's answer to `query`. The id is not checked here: the caller compares
/// [`answer_id`] with the id it used upstream.
pub fn parse_answer(query: &Query, bytes: &[u8]) -> Result<Answer, MessageError> {
    let message = Message::from_vec(bytes)?;
    if message.message_type() != MessageType::Response {
        return Err(MessageError::NotAResponse);
    }
    let asked = &query.question;
    match message.queries() {
        // `Name`'s equality ignores case.
        [question]
            if question.name() == asked.name()
                && question.query_type() == asked.query_type()
                && question.query_class() == asked.query_class() => {}
        _ => return Err(MessageError::QuestionMismatch),
    }
    let records = message.answers();
    let mut chain: Vec<&Name> = vec![asked.name()];
    let mut current = asked.name();
    let mut aliases = Vec::new();
    for _ in 0..MAX_CNAME_HOPS {
        let target = records.iter().find_map(|record| match record.data() {
            RData::CNAME(cname)
                if record.dns_class() == DNSClass::IN && record.name() == current =>
            {
                Some(&cname.0)
            }
            _ => None,
        });
        let Some(target) = target else { break };
        if chain.contains(&target) {
            break;
        }
        aliases.push(presentation(target));
        chain.push(target);
        current = target;
    }
    let addresses = records
        .iter()
        .filter(|record| record.dns_class() == DNSClass::IN && chain.contains(&record.name()))
        .filter_map(|record| match record.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), record.ttl())),
            RData::AAAA(aaaa) => Some((IpAddr::V6(aaaa.0), record.ttl())),
            _ => None,
        })
        .collect();
    Ok(Answer {
        truncated: message.truncated(),
        code: code_name(message.response_code().into()),
        addresses,
        aliases,
    })
}

/// A reply of the resolver's own: the question echoed, no records.
fn reply(query: &Query, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let rd = if query.recursion_desired { RD } else { 0 };
    write_header(
        &mut out,
        query.id,
        [QR | rd, RA | cd(query) | rcode],
        query.edns.is_some(),
    );
    write_question(&mut out, &query.question);
    if let Some(edns) = query.edns {
        write_opt(
            &mut out,
            Edns {
                payload: EDNS_PAYLOAD,
                ..edns
            },
        );
    }
    out
}

fn cd(query: &Query) -> u8 {
    if query.checking_disabled { CD } else { 0 }
}

/// A header for one question and, with `opt`, one additional record.
fn write_header(out: &mut Vec<u8>, id: u16, flags: [u8; 2], opt: bool) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags);
    out.extend_from_slice(&1_u16.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&u16::from(opt).to_be_bytes());
}

/// The question uncompressed; the decoder already held the name to 255 bytes and its labels
/// to 63.
fn write_question(out: &mut Vec<u8>, question: &op::Query) {
    for label in question.name() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.extend_from_slice(&u16::from(question.query_type()).to_be_bytes());
    out.extend_from_slice(&u16::from(question.query_class()).to_be_bytes());
}

/// An OPT record: root owner, the payload in the class, version 0, no options.
fn write_opt(out: &mut Vec<u8>, edns: Edns) {
    out.push(0);
    out.extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
    out.extend_from_slice(&edns.payload.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let flags = if edns.dnssec_ok { DO } else { 0 };
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// The name in lower case without the trailing dot. Bytes other than letters, digits, '-' and
/// '_' are written `\DDD`, so that a label holding a dot cannot pass for two labels.
fn presentation(name: &Name) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for byte in label.iter().map(u8::to_ascii_lowercase) {
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                out.push(char::from(byte));
            } else {
                // Writing to a `String` cannot fail.
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out
}

/// The type's mnemonic, or `TYPEn` (RFC 3597) for the ones hickory-proto does not know.
fn type_name(record_type: RecordType) -> String {
    match record_type {
        RecordType::Unknown(_) | RecordType::ZERO => format!("TYPE{}", u16::from(record_type)),
        known => <&str>::from(known).to_owned(),
    }
}

/// The response code's mnemonic (hickory-proto's `Display` writes prose, "No Error").
fn code_name(code: u16) -> String {
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        other => return format!("RCODE{other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{Edns, ResponseCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn question_message(id: u16, text: &str, record_type: RecordType) -> Message {
        let mut message = Message::new();
        message
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(op::Query::query(name(text), record_type));
        message
    }

    fn query(text: &str, record_type: RecordType) -> Query {
        parse_query(&question_message(7, text, record_type).to_vec().unwrap()).unwrap()
    }

    /// The upstream's response to `query`, with `records` in the answer section.
    fn response(query: &Query, records: Vec<Record>) -> Message {
        let mut message = Message::new();
        message
            .set_id(99)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .set_recursion_available(true)
            .add_query(query.question.clone())
            .add_answers(records);
        message
    }

    fn a(owner: &str, address: Ipv4Addr, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(address)))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 300, RData::CNAME(CNAME(name(target))))
    }

    fn answer(query: &Query, records: Vec<Record>) -> Answer {
        parse_answer(query, &response(query, records).to_vec().unwrap()).unwrap()
    }

    #[test]
    fn a_query_round_trips_in_lower_case() {
        let bytes = question_message(0x1234, "API.Example.COM.", RecordType::A)
            .to_vec()
            .unwrap();
        let query = parse_query(&bytes).unwrap();
        assert_eq!(query.id, 0x1234);
        assert_eq!(query.name, "api.example.com");
        assert_eq!(query.record_type, "A");
        assert!(query.asks_addresses);
        // The replies echo the name in the case it was asked.
        let reply = Message::from_vec(&refused(&query)).unwrap();
        assert!(reply.queries()[0].name().eq_case(&name("API.Example.COM.")));
    }

    #[test]
    fn record_types_are_written_as_dns_writes_them() {
        assert!(query("example.com.", RecordType::AAAA).asks_addresses);
        let txt = query("example.com.", RecordType::TXT);
        assert_eq!(txt.record_type, "TXT");
        assert!(!txt.asks_addresses);
        assert_eq!(
            query("example.com.", RecordType::HTTPS).record_type,
            "HTTPS"
        );
        assert_eq!(
            query("example.com.", RecordType::Unknown(65_280)).record_type,
            "TYPE65280"
        );
    }

    #[test]
    fn odd_bytes_in_a_name_are_escaped() {
        let label = Name::from_labels([&b"a.b"[..], b"Ex ample", b"com"]).unwrap();
        assert_eq!(presentation(&label), "a\\046b.ex\\032ample.com");
        assert_eq!(presentation(&Name::root()), "");
    }

    #[test]
    fn a_response_is_not_a_query() {
        let mut message = question_message(1, "example.com.", RecordType::A);
        message.set_message_type(MessageType::Response);
        assert!(matches!(
            parse_query(&message.to_vec().unwrap()),
            Err(MessageError::NotAQuery)
        ));
    }

    #[test]
    fn only_standard_queries_are_accepted() {
        let mut message = question_message(1, "example.com.", RecordType::A);
        message.set_op_code(OpCode::Status);
        assert!(matches!(
            parse_query(&message.to_vec().unwrap()),
            Err(MessageError::Opcode(2))
        ));
    }

    #[test]
    fn a_query_has_exactly_one_question() {
        let mut message = question_message(1, "example.com.", RecordType::A);
        message.add_query(op::Query::query(name("example.org."), RecordType::A));
        assert!(matches!(
            parse_query(&message.to_vec().unwrap()),
            Err(MessageError::Questions(2))
        ));
        let mut empty = Message::new();
        empty.set_id(1);
        assert!(matches!(
            parse_query(&empty.to_vec().unwrap()),
            Err(MessageError::Questions(0))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_query(b"\x00\x01\x00"),
            Err(MessageError::Malformed(_))
        ));
        let mut truncated = question_message(1, "example.com.", RecordType::A)
            .to_vec()
            .unwrap();
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(
            parse_query(&truncated),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn refused_and_servfail_carry_the_id_the_question_and_the_code() {
        let mut asked = question_message(0xbeef, "Blocked.Example.", RecordType::AAAA);
        asked.set_checking_disabled(true);
        let query = parse_query(&asked.to_vec().unwrap()).unwrap();
        for (bytes, code) in [
            (refused(&query), ResponseCode::Refused),
            (servfail(&query), ResponseCode::ServFail),
        ] {
            let reply = Message::from_vec(&bytes).unwrap();
            assert_eq!(reply.id(), 0xbeef);
            assert_eq!(reply.message_type(), MessageType::Response);
            assert_eq!(reply.op_code(), OpCode::Query);
            assert_eq!(reply.response_code(), code);
            assert!(reply.recursion_desired());
            assert!(reply.recursion_available());
            assert!(reply.checking_disabled());
            assert_eq!(reply.queries(), asked.queries());
            assert!(reply.answers().is_empty());
            assert!(reply.name_servers().is_empty());
            assert!(reply.additionals().is_empty());
            assert!(reply.extensions().is_none());
        }
        let mut not_recursive = question_message(2, "blocked.example.", RecordType::A);
        not_recursive.set_recursion_desired(false);
        let query = parse_query(&not_recursive.to_vec().unwrap()).unwrap();
        assert!(
            !Message::from_vec(&refused(&query))
                .unwrap()
                .recursion_desired()
        );
    }

    #[test]
    fn replies_carry_opt_when_the_query_did() {
        let mut asked = question_message(3, "blocked.example.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096).set_dnssec_ok(true);
        asked.set_edns(edns);
        let query = parse_query(&asked.to_vec().unwrap()).unwrap();
        let reply = Message::from_vec(&refused(&query)).unwrap();
        let opt = reply.extensions().as_ref().unwrap();
        assert_eq!(opt.max_payload(), EDNS_PAYLOAD);
        assert!(opt.flags().dnssec_ok);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
    }

    #[test]
    fn a_cname_chain_leads_to_the_addresses() {
        let query = query("WWW.example.com.", RecordType::A);
        let mut records = vec![
            cname("www.example.com.", "CDN.example.net."),
            cname("cdn.example.net.", "edge.example.org."),
        ];
        let addresses: Vec<Ipv4Addr> = (1..=30).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        records.extend(addresses.iter().map(|&ip| a("Edge.Example.org.", ip, 60)));
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        records.push(Record::from_rdata(
            name("edge.example.org."),
            120,
            RData::AAAA(AAAA(v6)),
        ));
        let answer = answer(&query, records);
        assert!(!answer.truncated);
        assert_eq!(answer.code, "NOERROR");
        assert_eq!(answer.aliases, ["cdn.example.net", "edge.example.org"]);
        let mut expected: Vec<(IpAddr, u32)> =
            addresses.iter().map(|&ip| (IpAddr::V4(ip), 60)).collect();
        expected.push((IpAddr::V6(v6), 120));
        assert_eq!(answer.addresses, expected);
    }

    #[test]
    fn records_about_other_names_are_ignored() {
        let query = query("api.example.com.", RecordType::A);
        let answer = answer(
            &query,
            vec![
                a("api.example.com.", Ipv4Addr::new(192, 0, 2, 1), 30),
                a("bank.example.", Ipv4Addr::new(203, 0, 113, 9), 30),
                cname("other.example.", "api.example.com."),
            ],
        );
        assert_eq!(
            answer.addresses,
            [(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 30)]
        );
        assert!(answer.aliases.is_empty());
    }

    #[test]
    fn a_cname_loop_ends() {
        let query = query("a.example.", RecordType::A);
        let answer = answer(
            &query,
            vec![
                cname("a.example.", "b.example."),
                cname("b.example.", "a.example."),
                a("b.example.", Ipv4Addr::new(192, 0, 2, 2), 10),
            ],
        );
        assert_eq!(answer.aliases, ["b.example"]);
        assert_eq!(
            answer.addresses,
            [(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 10)]
        );
    }

    #[test]
    fn a_long_cname_chain_is_cut() {
        let query = query("c0.example.", RecordType::A);
        let records: Vec<Record> = (0..40)
            .map(|i| cname(&format!("c{i}.example."), &format!("c{}.example.", i + 1)))
            .chain([a("c40.example.", Ipv4Addr::new(192, 0, 2, 40), 10)])
            .collect();
        let answer = answer(&query, records);
        assert_eq!(answer.aliases.len(), MAX_CNAME_HOPS);
        assert!(answer.addresses.is_empty());
    }

    #[test]
    fn truncation_and_the_code_are_reported() {
        let query = query("big.example.", RecordType::A);
        let mut message = response(&query, Vec::new());
        message.set_truncated(true);
        let answer = parse_answer(&query, &message.to_vec().unwrap()).unwrap();
        assert!(answer.truncated);
        let mut message = response(&query, Vec::new());
        message.set_response_code(ResponseCode::NXDomain);
        let answer = parse_answer(&query, &message.to_vec().unwrap()).unwrap();
        assert_eq!(answer.code, "NXDOMAIN");
        assert!(!answer.truncated);
    }

    #[test]
    fn an_answer_to_another_question_is_an_error() {
        let query = query("api.example.com.", RecordType::A);
        for other in [
            op::Query::query(name("api.example.org."), RecordType::A),
            op::Query::query(name("api.example.com."), RecordType::AAAA),
        ] {
            let mut message = response(&query, Vec::new());
            message.queries_mut()[0] = other;
            assert!(matches!(
                parse_answer(&query, &message.to_vec().unwrap()),
                Err(MessageError::QuestionMismatch)
            ));
        }
        let mut message = response(&query, Vec::new());
        message.queries_mut().clear();
        assert!(matches!(
            parse_answer(&query, &message.to_vec().unwrap()),
            Err(MessageError::QuestionMismatch)
        ));
        // The case of the name does not matter.
        let mut message = response(&query, Vec::new());
        message.queries_mut()[0] = op::Query::query(name("API.EXAMPLE.COM."), RecordType::A);
        assert!(parse_answer(&query, &message.to_vec().unwrap()).is_ok());
    }

    #[test]
    fn a_query_is_not_an_answer() {
        let query = query("api.example.com.", RecordType::A);
        assert!(matches!(
            parse_answer(&query, &upstream_query(&query, 5)),
            Err(MessageError::NotAResponse)
        ));
        assert!(matches!(
            parse_answer(&query, b"\x01"),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn the_upstream_query_keeps_the_question_under_a_new_id() {
        let mut asked = question_message(0x1111, "Api.Example.com.", RecordType::AAAA);
        asked.set_recursion_desired(false);
        let query = parse_query(&asked.to_vec().unwrap()).unwrap();
        let sent = Message::from_vec(&upstream_query(&query, 0x2222)).unwrap();
        assert_eq!(sent.id(), 0x2222);
        assert_eq!(sent.message_type(), MessageType::Query);
        assert_eq!(sent.op_code(), OpCode::Query);
        assert!(sent.recursion_desired());
        assert_eq!(sent.queries(), asked.queries());
        assert!(sent.queries()[0].name().eq_case(&name("Api.Example.com.")));
        assert!(sent.extensions().is_none());
        assert_eq!(
            parse_query(&upstream_query(&query, 3)).unwrap().name,
            query.name
        );
    }

    #[test]
    fn the_upstream_query_offers_at_most_the_flag_day_payload() {
        for (offered, sent) in [(4096, EDNS_PAYLOAD), (512, 512), (1000, 1000)] {
            let mut asked = question_message(1, "example.com.", RecordType::A);
            let mut edns = Edns::new();
            edns.set_max_payload(offered);
            asked.set_edns(edns);
            let query = parse_query(&asked.to_vec().unwrap()).unwrap();
            let upstream = Message::from_vec(&upstream_query(&query, 2)).unwrap();
            let opt = upstream.extensions().as_ref().unwrap();
            assert_eq!(opt.max_payload(), sent);
            assert!(!opt.flags().dnssec_ok);
        }
    }

    #[test]
    fn format_error_needs_a_header() {
        let mut garbage = vec![0xab, 0xcd, RD, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(b"\xff\xfe\xfd");
        assert!(parse_query(&garbage).is_err());
        let reply = Message::from_vec(&format_error(&garbage).unwrap()).unwrap();
        assert_eq!(reply.id(), 0xabcd);
        assert_eq!(reply.message_type(), MessageType::Response);
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
        assert!(reply.recursion_desired());
        assert!(reply.queries().is_empty());
        assert_eq!(format_error(&garbage[..11]), None);
        // Never an answer to a response.
        garbage[2] |= QR;
        assert_eq!(format_error(&garbage), None);
    }

    #[test]
    fn with_id_patches_the_id() {
        let query = query("api.example.com.", RecordType::A);
        let upstream = response(&query, vec![a("api.example.com.", Ipv4Addr::LOCALHOST, 5)])
            .to_vec()
            .unwrap();
        assert_eq!(answer_id(&upstream), Some(99));
        let patched = with_id(&upstream, 0x4242);
        assert_eq!(answer_id(&patched), Some(0x4242));
        assert_eq!(patched[2..], upstream[2..]);
        assert_eq!(with_id(b"\x01", 7), b"\x01");
        assert_eq!(with_id(b"", 7), b"");
        assert_eq!(answer_id(&upstream[..11]), None);
    }
}
