// Package proxy is sbx's policy-enforcing HTTP(S) proxy: a forward proxy
// (HTTP_PROXY/HTTPS_PROXY in the guest; absolute-form requests and CONNECT)
// and a transparent one for TCP flows the netstack steers to it (HandleConn;
// Host header or TLS SNI).
//
// Model:
//
//   - Every connection or request is turned into a Target (host as
//     requested, port, the addresses the host resolved to through the
//     injected Resolver, the path taken and the scheme) and handed to
//     Config.Decide. Deny and "no decision" mean a 403 page (or a reset for
//     plain TCP). Every decision is reported through Config.Audit.
//   - When allowed, the proxy dials exactly the addresses in the Target it
//     decided on (through the injected Dial), never resolving the name a
//     second time: a DNS answer that changes between the check and the
//     connection (rebinding) cannot redirect it.
//   - HTTPS is tunnelled (raw bytes, the proxy sees only host and port)
//     unless Config.Intercept asks for termination. Terminated connections
//     get a leaf certificate minted by the per-install CA (LoadOrCreateCA);
//     their requests are decided again one by one, must carry a Host equal
//     to the TLS server name, pass through Config.ModifyRequest, and go
//     upstream over TLS verified against Config.UpstreamRoots, with HTTP/2
//     where both sides offer it.
//   - Bodies stream: chunked transfers, server-sent events and WebSocket
//     upgrades pass through without buffering; hop-by-hop headers are
//     removed. Headers and query strings are never logged or audited.
//
// See docs/proxy.md for the user-facing account.
package proxy
