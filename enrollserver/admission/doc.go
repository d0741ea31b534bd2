// Package admission decides which enrollment requests the server works on
// now, which wait, and which it refuses with a Retry-After: bounded
// in-flight work, a bounded priority queue that is fair between clients,
// and a token bucket per client. It is transport-neutral: the HTTPS and
// MQTT adapters classify a request cheaply (before decoding its evidence),
// ask a Controller for a Permit, and map a *RefusedError to 429 or an MQTT
// busy reply.
//
// Trust boundary: the Class and Key of a Request come from the adapter.
// The adapter must derive them only from what the transport has already
// verified (a device certificate checked by the TLS handshake, the broker's
// authenticated client ID, the peer address) or from facts that cost the
// client nothing to lie about only within its own share (the operation
// name). The package itself verifies nothing and holds no enrollment
// logic; it never logs and has no global state.
package admission
