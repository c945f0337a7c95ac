//! The reports of the load generators the benchmarks drive, read: h2load's
//! and dnsperf's. A report that lacks a line the benchmark needs is a
//! panic that prints it (benchmark support: the run is spoiled).

/// What h2load reported for one run.
#[derive(Debug, Clone, Default)]
pub struct H2load {
    /// `finished in 10.00s`.
    pub seconds: f64,
    /// `requests:` total, started, done, succeeded, failed, errored,
    /// timeout.
    pub requests: Vec<u64>,
    /// `status codes:` 2xx, 3xx, 4xx, 5xx (responses still arriving at
    /// the end are counted too).
    pub statuses: Vec<u64>,
    /// Response head bytes (HPACK-compressed over HTTP/2).
    pub header_bytes: u64,
    /// Response body bytes.
    pub data_bytes: u64,
    /// TLS version, cipher, key exchange and ALPN.
    pub tls: String,
}

/// The leading count of each comma-separated part ("N total, N started").
fn counts(text: &str) -> Vec<u64> {
    text.split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect()
}

fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
        .trim()
}

impl H2load {
    pub fn parse(out: &str) -> H2load {
        // finished in 10.00s, 92712.30 req/s, 95.26MB/s (or 361.68ms)
        let duration = line_after(out, "finished in")
            .split(',')
            .next()
            .unwrap_or_default();
        let seconds = [("ms", 1e-3), ("us", 1e-6), ("s", 1.0)]
            .iter()
            .find_map(|(unit, scale)| {
                let n: f64 = duration.strip_suffix(unit)?.parse().ok()?;
                Some(n * scale)
            })
            .unwrap_or_else(|| panic!("h2load's duration in:\n{out}"));
        // traffic: 952.60MB (998870234) total, 12.97MB (13600000) headers (space savings 0.00%), 906.60MB (950650000) data
        let exact: Vec<u64> = line_after(out, "traffic:")
            .split('(')
            .skip(1)
            .filter_map(|p| p.split(')').next()?.parse().ok())
            .collect();
        let tls = [
            "TLS Protocol:",
            "Cipher:",
            "Server Temp Key:",
            "Application protocol:",
        ]
        .iter()
        .filter_map(|p| out.lines().find_map(|l| l.strip_prefix(p)))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(", ");
        H2load {
            seconds,
            requests: counts(line_after(out, "requests:")),
            statuses: counts(line_after(out, "status codes:")),
            header_bytes: exact.get(1).copied().unwrap_or(0),
            data_bytes: exact.get(2).copied().unwrap_or(0),
            tls,
        }
    }

    pub fn succeeded(&self) -> u64 {
        self.requests.get(3).copied().unwrap_or(0)
    }

    /// Some succeeded, none failed, and every status was 2xx.
    pub fn all_ok(&self) -> bool {
        self.succeeded() > 0
            && self.requests.iter().skip(4).all(|n| *n == 0)
            && self.statuses.iter().skip(1).all(|n| *n == 0)
    }

    pub fn rate(&self) -> f64 {
        self.succeeded() as f64 / self.seconds
    }
}

/// What dnsperf reported for one run.
#[derive(Debug, Clone, Default)]
pub struct Dnsperf {
    pub qps: f64,
    pub completed: u64,
    pub lost: u64,
    pub avg_latency_us: f64,
    /// `Response codes:` as printed (`NOERROR 90000 (90.00%), …`).
    pub rcodes: String,
    pub response_bytes: f64,
    /// Per query, with `-v`: its latency.
    pub latencies_us: Vec<f64>,
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .map(str::trim)
}

fn first_number(s: Option<&str>) -> f64 {
    s.and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or(0.0)
}

impl Dnsperf {
    pub fn parse(out: &str) -> Dnsperf {
        let completed = first_number(field(out, "Queries completed:")) as u64;
        assert!(completed > 0, "dnsperf completed no queries:\n{out}");
        Dnsperf {
            qps: first_number(field(out, "Queries per second:")),
            completed,
            lost: first_number(field(out, "Queries lost:")) as u64,
            avg_latency_us: first_number(field(out, "Average Latency (s):")) * 1e6,
            rcodes: field(out, "Response codes:").unwrap_or("").to_owned(),
            response_bytes: field(out, "Average packet size:")
                .and_then(|s| s.split_once("response "))
                .and_then(|(_, n)| n.trim().parse().ok())
                .unwrap_or(0.0),
            latencies_us: out
                .lines()
                .filter_map(|l| l.strip_prefix("> "))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|s| s * 1e6)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2loads_report_is_read() {
        let out = "finished in 10.00s, 92712.30 req/s, 95.26MB/s
requests: 927123 total, 927187 started, 927123 done, 927123 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 927123 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 952.60MB (998870234) total, 12.97MB (13600000) headers (space savings 0.00%), 906.60MB (950650000) data
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
";
        let r = H2load::parse(out);
        assert_eq!(r.succeeded(), 927_123);
        assert!(r.all_ok());
        assert_eq!((r.header_bytes, r.data_bytes), (13_600_000, 950_650_000));
        assert_eq!(r.tls, "TLSv1.3, TLS_AES_128_GCM_SHA256");
        assert!((r.rate() - 92_712.3).abs() < 1.0);
        let short = out.replace("finished in 10.00s", "finished in 361.68ms");
        assert!((H2load::parse(&short).seconds - 0.36168).abs() < 1e-9);
    }

    #[test]
    fn dnsperfs_report_is_read() {
        let out = "  Queries sent:         100
  Queries completed:    99 (99.00%)
  Queries lost:         1 (1.00%)
  Response codes:       NOERROR 90 (90.91%), NXDOMAIN 9 (9.09%)
  Average packet size:  request 40, response 98
  Queries per second:   12345.678
  Average Latency (s):  0.000123 (min 0.000010, max 0.001000)
";
        let r = Dnsperf::parse(out);
        assert_eq!((r.completed, r.lost), (99, 1));
        assert!((r.qps - 12_345.678).abs() < 1e-6);
        assert!((r.avg_latency_us - 123.0).abs() < 1e-6);
        assert!((r.response_bytes - 98.0).abs() < 1e-9);
        assert!(r.rcodes.starts_with("NOERROR 90"));
    }
}
