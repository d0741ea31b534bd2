// Package store persists the enrollment server's state: devices, enrollment
// sessions, pre-registrations, issued certificates, groups, config versions,
// approved firmware references and the audit log.
//
// Store is the one interface the server uses; Open returns the embedded
// bbolt implementation (one file, fsynced transactions). The shared
// conformance suite in storetest runs against every implementation.
//
// The store never holds a secret: sessions keep a hash of the expected
// activation proof, not the activation secret, and CA keys live in pki.
package store
