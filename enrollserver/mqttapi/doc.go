// Package mqttapi is the MQTT transport of the enrollment server: one
// handler that passes requests to the same enrollserver.Server the HTTPS
// adapter uses, behind either an embedded broker (mochi-mqtt, the default)
// or a connection to an external broker such as mosquitto.
//
// Identity: a device with a certificate uses its device ID as client ID and
// the topics under enroll/v1/dev/<id>/; a client without one uses a
// bootstrap ID and enroll/v1/boot/<id>/, and may only begin and finish
// enrollment. The embedded broker enforces this in its hooks; an external
// broker must enforce it with the ACLs in deploy/mosquitto. A session is
// bound to the client that began it, and its finish answer is sealed with a
// key only that device's TPM can rebuild, so neither another client nor the
// broker can read or alter it.
package mqttapi
