// iotfleet reference gateway (ESP8266, Arduino core 3.x).
//
// Reads its identity from LittleFS as iotfleet flashed it (docs/gateways.md):
//   /iotfleet.json  configuration (device id, Wi-Fi SSID, brokers, port, topics, timings)
//   /ca.pem         CA chain that signed the brokers' certificates
//   /client.pem     this device's certificate      /client.key  its private key (PKCS#8)
//   /wifi.pass      Wi-Fi passphrase                /mqtt.pass   MQTT password (optional)
// then joins Wi-Fi, sets the clock by NTP (certificates cannot be checked without the date),
// connects to the first broker that answers over TLS with its client certificate (BearSSL),
// publishes telemetry, answers commands, and reconnects with exponential backoff and jitter.
// Failover (iotfleet.gateway.failover, as the simulator does it): when its broker dies it dials
// the next one of /iotfleet.json's list, round the list; from a later broker it looks every
// kReturnIntervalMs whether an earlier one listens again (a plain TCP connect: no second TLS
// session fits in the heap) and moves back to it; a move back that fails returns at once to the
// broker it left. A reboot starts again with the first broker.
// Certificate renewal over the air (docs/gateways.md): it listens on
// iotfleet/pki/<device id>/certificate, installs a certificate only if it carries this board's
// own public key and chains to a root in the flashed /ca.pem, stores it (write /client.pem.new in
// full, then rename: "Switching identity" in docs/gateways.md, finished or undone at boot after
// a power cut), restarts with it and reports its serial in the online status.
// Re-key over the air: on a request on iotfleet/pki/<device id>/rekey it makes a new EC P-256
// key with BearSSL (seeded from the hardware RNG), keeps it in /client.key.new, and publishes a
// PKCS#10 CSR for CN=<device id> signed with it on iotfleet/pki/<device id>/csr (retained); the
// certificate for the new key arrives like a renewal; /client.pem.new is written in full, then
// /client.key.new is renamed over /client.key, then /client.pem.new over /client.pem.
// Publishes go out at QoS 0 (PubSubClient publishes nothing else; the will is QoS 1): a CSR or
// status lost with a dropped connection is published again after the reconnect.
//
// Not compiled in iotfleet's CI (no Xtensa toolchain there); the same contract is exercised by
// iotfleet's gateway simulator (`iotfleet gateway run`). Secrets are never printed.

#include <Arduino.h>
#include <ArduinoJson.h>
#include <ESP8266WiFi.h>
#include <LittleFS.h>
#include <PubSubClient.h>
#include <WiFiClientSecureBearSSL.h>
#include <time.h>

namespace {

constexpr int kContractVersion = 1;
constexpr size_t kMaxFile = 16 * 1024;     // iotfleet refuses bigger files
constexpr size_t kMaxConfig = 2048;
constexpr time_t kSaneTime = 1700000000;   // any date before this means NTP has not answered
constexpr size_t kMqttBuffer = 6144;       // a certificate update (leaf + chain, EC) is ~2.6 KB
const char *kFirmware = "iotfleet-gateway/1";
constexpr uint32_t kReturnIntervalMs = 60000;  // failover.RETURN_INTERVAL: looks at earlier ones
constexpr uint32_t kProbeTimeoutMs = 3000;     // failover.PROBE_TIMEOUT

struct Config {
  String deviceId, ssid, wifiPass, username, mqttPass;
  String hosts[8];
  int hostCount = 0;
  uint16_t mqttPort = 8883;
  String telemetryTopic, statusTopic, commandsTopic, commandsFilter, certificateTopic;
  String rekeyTopic, csrTopic;
  uint16_t keepalive = 60;
  uint32_t telemetryInterval = 30;
  String ntp[3];
  int ntpCount = 0;
  float backoffInitial = 1.0f, backoffMax = 300.0f;
};

Config config;
String caPem, certPem, keyPem;
String certSerial;  // hex serial of /client.pem, reported in the online status
BearSSL::X509List *trustAnchors = nullptr;
BearSSL::X509List *clientCert = nullptr;
BearSSL::PrivateKey *clientKey = nullptr;
BearSSL::PrivateKey *pendingKey = nullptr;  // /client.key.new: a re-key waiting for its cert
BearSSL::WiFiClientSecure tlsClient;
PubSubClient mqtt(tlsClient);

uint32_t seq = 0;
uint32_t nextTelemetryMs = 0;
uint32_t nextAttemptMs = 0;
uint32_t attempts = 0;
uint32_t nextLookMs = 0;
int hostIndex = 0;   // the broker to dial (BrokerOrder.current)
int leftIndex = -1;  // where a move back came from, its fallback (BrokerOrder.left)
bool online = false;

bool readFile(const char *path, String &out, size_t limit) {
  File f = LittleFS.open(path, "r");
  if (!f) return false;
  if (f.size() > limit) {
    f.close();
    return false;
  }
  out = f.readString();
  f.close();
  return true;
}

// The serial of the first certificate in ``list``, as 40 lowercase hex digits (how iotfleet
// writes serials): Certificate ::= SEQUENCE { tbs SEQUENCE { [0] version?, serial INTEGER, ...
String serialHex(BearSSL::X509List *list) {
  if (list == nullptr || list->getCount() == 0) return "";
  const br_x509_certificate &c = list->getX509Certs()[0];
  const uint8_t *p = c.data, *end = c.data + c.data_len;
  auto header = [&](uint8_t tag, size_t &len) -> bool {  // reads a DER tag and length
    if (p + 2 > end || *p++ != tag) return false;
    len = *p++;
    if (len & 0x80) {
      int n = len & 0x7f;
      len = 0;
      while (n-- > 0 && p < end) len = (len << 8) | *p++;
    }
    return p + len <= end;
  };
  size_t len;
  if (!header(0x30, len) || !header(0x30, len)) return "";
  if (p < end && *p == 0xA0) {  // explicit version
    if (!header(0xA0, len)) return "";
    p += len;
  }
  if (!header(0x02, len)) return "";
  String hex;
  for (size_t i = 0; i < len; i++) {
    if (i == 0 && p[i] == 0 && len > 1) continue;  // DER sign byte
    char b[3];
    snprintf(b, sizeof b, "%02x", p[i]);
    hex += b;
  }
  while (hex.length() < 40) hex = "0" + hex;
  return hex;
}

bool sameKey(const br_x509_pkey *pk, BearSSL::PrivateKey *key);

// True if ``pem`` is a whole certificate for ``key`` (its public key is the key's).
bool certifiesKey(const String &pem, BearSSL::PrivateKey *key) {
  BearSSL::X509List list(pem.c_str());
  if (list.getCount() == 0) return false;
  const br_x509_certificate &c = list.getX509Certs()[0];
  br_x509_decoder_context dc;
  br_x509_decoder_init(&dc, nullptr, nullptr);
  br_x509_decoder_push(&dc, c.data, c.data_len);
  const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
  return pk != nullptr && br_x509_decoder_last_error(&dc) == 0 && sameKey(pk, key);
}

// At boot, before the identity is read: finish or undo a switch a power cut left half done
// (docs/gateways.md, "Switching identity"; the simulator's iotfleet/gateway/identity.py).
// The switch writes /client.pem.new in full, renames /client.key.new over /client.key (a
// re-key), then /client.pem.new over /client.pem.
void finishIdentitySwitch() {
  if (!LittleFS.exists("/client.pem.new")) return;
  if (LittleFS.exists("/client.key.new")) {
    // Cut before the key was renamed: the old pair is intact and the certificate is still
    // retained on the certificate topic; the re-key's key stays, waiting for it.
    LittleFS.remove("/client.pem.new");
    Serial.println("iotfleet: a certificate switch was cut short; undone");
    return;
  }
  String pem, keyText;
  bool whole = readFile("/client.pem.new", pem, kMaxFile) &&
               readFile("/client.key", keyText, kMaxFile);
  if (whole) {
    BearSSL::PrivateKey key(keyText.c_str());
    whole = certifiesKey(pem, &key);
  }
  keyText = "";
  if (whole && LittleFS.rename("/client.pem.new", "/client.pem")) {
    Serial.println("iotfleet: a certificate switch was cut short; finished");
  } else {
    LittleFS.remove("/client.pem.new");  // cut while it was written: the old pair stays
    Serial.println("iotfleet: a certificate switch was cut short; undone");
  }
}

[[noreturn]] void halt(const char *why) {
  Serial.printf("iotfleet: cannot start: %s\n", why);
  for (;;) delay(1000);  // keep the flash as it is: a person has to look at this board
}

void loadContract() {
  // Never let the core format the partition when it does not mount: that would erase the
  // identity iotfleet flashed (the usual cause is a layout mismatch with the inventory).
  LittleFSConfig fsConfig;
  fsConfig.setAutoFormat(false);
  LittleFS.setConfig(fsConfig);
  if (!LittleFS.begin()) halt("LittleFS does not mount (flash layout differs from espgw_layout?)");
  finishIdentitySwitch();

  String json;
  if (!readFile("/iotfleet.json", json, kMaxConfig)) halt("/iotfleet.json missing or too big");
  JsonDocument doc;
  if (deserializeJson(doc, json)) halt("/iotfleet.json is not JSON");
  if (doc["version"].as<int>() != kContractVersion) halt("unknown contract version");
  config.deviceId = doc["device_id"].as<String>();
  config.ssid = doc["wifi_ssid"].as<String>();
  for (JsonVariant host : doc["mqtt_hosts"].as<JsonArray>()) {
    if (config.hostCount < 8) config.hosts[config.hostCount++] = host.as<String>();
  }
  config.mqttPort = doc["mqtt_port"] | 8883;
  if (doc["mqtt_username"].is<const char *>()) config.username = doc["mqtt_username"].as<String>();
  config.telemetryTopic = doc["topics"]["telemetry"].as<String>() + "/state";
  config.statusTopic = doc["topics"]["status"].as<String>();
  config.commandsTopic = doc["topics"]["commands"].as<String>();
  config.commandsFilter = config.commandsTopic + "/#";
  config.keepalive = doc["keepalive"] | 60;
  config.telemetryInterval = doc["telemetry_interval"] | 30;
  for (JsonVariant server : doc["ntp_servers"].as<JsonArray>()) {
    if (config.ntpCount < 3) config.ntp[config.ntpCount++] = server.as<String>();
  }
  config.backoffInitial = doc["backoff_initial"] | 1.0f;
  config.backoffMax = doc["backoff_max"] | 300.0f;
  if (config.hostCount == 0) halt("no broker in /iotfleet.json");

  if (!readFile("/ca.pem", caPem, kMaxFile)) halt("/ca.pem missing");
  if (!readFile("/client.pem", certPem, kMaxFile)) halt("/client.pem missing");
  if (!readFile("/client.key", keyPem, kMaxFile)) halt("/client.key missing");
  if (!readFile("/wifi.pass", config.wifiPass, 63)) halt("/wifi.pass missing");
  if (config.username.length() && !readFile("/mqtt.pass", config.mqttPass, kMaxFile)) {
    halt("/mqtt.pass missing while mqtt_username is set");
  }

  trustAnchors = new BearSSL::X509List(caPem.c_str());
  clientCert = new BearSSL::X509List(certPem.c_str());
  clientKey = new BearSSL::PrivateKey(keyPem.c_str());
  keyPem = "";  // BearSSL holds the parsed key; drop the PEM copy
  certSerial = serialHex(clientCert);
  config.certificateTopic = String("iotfleet/pki/") + config.deviceId + "/certificate";
  config.rekeyTopic = String("iotfleet/pki/") + config.deviceId + "/rekey";
  config.csrTopic = String("iotfleet/pki/") + config.deviceId + "/csr";
  String pending;
  if (readFile("/client.key.new", pending, kMaxFile)) pendingKey = new BearSSL::PrivateKey(pending.c_str());
  tlsClient.setTrustAnchors(trustAnchors);
  if (clientKey->isEC()) {
    // iotfleet's issuing CA uses an EC key.
    tlsClient.setClientECCert(clientCert, clientKey, BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN,
                              BR_KEYTYPE_EC);
  } else {
    tlsClient.setClientRSACert(clientCert, clientKey);
  }
  Serial.printf("iotfleet: device %s, %d broker(s), port %u\n", config.deviceId.c_str(),
                config.hostCount, config.mqttPort);
}

void joinWifi() {
  WiFi.mode(WIFI_STA);
  WiFi.persistent(false);  // keep the passphrase out of the SDK's Wi-Fi settings sector
  WiFi.begin(config.ssid.c_str(), config.wifiPass.c_str());
  Serial.printf("iotfleet: joining %s", config.ssid.c_str());
  while (WiFi.status() != WL_CONNECTED) {
    delay(250);
    Serial.print('.');
  }
  Serial.printf(" ok, %s\n", WiFi.localIP().toString().c_str());
}

void setClock() {
  const char *a = config.ntpCount > 0 ? config.ntp[0].c_str() : "pool.ntp.org";
  const char *b = config.ntpCount > 1 ? config.ntp[1].c_str() : nullptr;
  const char *c = config.ntpCount > 2 ? config.ntp[2].c_str() : nullptr;
  configTime(0, 0, a, b, c);
  Serial.print("iotfleet: waiting for NTP");
  while (time(nullptr) < kSaneTime) {
    delay(500);
    Serial.print('.');
  }
  Serial.println(" ok");
}

// Presence on the status topic. Online: ``since`` is when this session came online. The will
// (offline) is fixed at connect time, so it carries the same time as ``last_online``: a retained
// will replaces the retained online status, and the fleet still sees when the board was last up.
String statusJson(const char *state, time_t onlineAt) {
  JsonDocument doc;
  doc["state"] = state;
  doc["cert_serial"] = certSerial;
  doc["firmware"] = kFirmware;
  char at[24];
  strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", gmtime(&onlineAt));
  doc[strcmp(state, "online") == 0 ? "since" : "last_online"] = at;
  String body;
  serializeJson(doc, body);
  return body;
}

// The public key of a private key, as BearSSL encodes it (EC point, or RSA modulus).
bool publicKeyOf(BearSSL::PrivateKey *key, uint8_t *out, size_t &len) {
  if (key->isEC()) {
    const br_ec_private_key *sk = key->getEC();
    br_ec_public_key pk;
    len = br_ec_compute_pub(br_ec_get_default(), &pk, out, sk);
    return len > 0;
  }
  len = br_rsa_compute_modulus_get_default()(out, key->getRSA());
  return len > 0;
}

bool sameKey(const br_x509_pkey *pk, BearSSL::PrivateKey *key) {
  uint8_t own[520];
  size_t ownLen = 0;
  if (key == nullptr || !publicKeyOf(key, own, ownLen)) return false;
  const uint8_t *theirs = pk->key_type == BR_KEYTYPE_EC ? pk->key.ec.q : pk->key.rsa.n;
  size_t theirLen = pk->key_type == BR_KEYTYPE_EC ? pk->key.ec.qlen : pk->key.rsa.nlen;
  return theirLen == ownLen && memcmp(theirs, own, ownLen) == 0;
}

bool certifiesPendingKey = false;  // set by checkCertificate: the update is for /client.key.new

// Why the pushed certificate must not be used, or nullptr when it may be installed.
const char *checkCertificate(BearSSL::X509List &leafAndChain) {
  if (leafAndChain.getCount() == 0) return "not PEM";
  // Trust anchors come from the flash only (trustAnchors, from /ca.pem); the message may add
  // intermediates. BearSSL's minimal engine checks signatures, validity dates, CA constraints.
  br_x509_minimal_context x;
  br_x509_minimal_init(&x, &br_sha256_vtable, trustAnchors->getTrustAnchors(),
                       trustAnchors->getCount());
  br_x509_minimal_set_hash(&x, br_sha256_ID, &br_sha256_vtable);
  br_x509_minimal_set_hash(&x, br_sha384_ID, &br_sha384_vtable);
  br_x509_minimal_set_ecdsa(&x, br_ec_get_default(), br_ecdsa_vrfy_asn1_get_default());
  br_x509_minimal_set_rsa(&x, br_rsa_pkcs1_vrfy_get_default());
  time_t now = time(nullptr);
  br_x509_minimal_set_time(&x, (uint32_t)(now / 86400 + 719528), (uint32_t)(now % 86400));
  const br_x509_class **vt = &x.vtable;
  (*vt)->start_chain(vt, nullptr);  // no server name: this is our own client certificate
  for (size_t i = 0; i < leafAndChain.getCount(); i++) {
    const br_x509_certificate &c = leafAndChain.getX509Certs()[i];
    (*vt)->start_cert(vt, c.data_len);
    (*vt)->append(vt, c.data, c.data_len);
    (*vt)->end_cert(vt);
  }
  if ((*vt)->end_chain(vt) != BR_ERR_OK) return "the certificate does not chain to the CA";
  const br_x509_pkey *pk = (*vt)->get_pkey(vt, nullptr);
  if (pk == nullptr) return "no public key";
  certifiesPendingKey = false;
  if (sameKey(pk, clientKey)) return nullptr;
  if (sameKey(pk, pendingKey)) {
    certifiesPendingKey = true;
    return nullptr;
  }
  return "the certificate does not carry this gateway's key";
}

void certificateUpdate(uint8_t *payload, unsigned int length) {
  JsonDocument update;
  const char *why = nullptr;
  if (deserializeJson(update, payload, length) || update["version"] != 1) {
    why = "certificate update: not version 1 JSON";
  } else if (config.deviceId != update["device"].as<String>()) {
    why = "the update is for another device";
  } else if (update["serial"].as<String>() == certSerial) {
    return;  // the retained copy of what this board uses already
  }
  String pemLeaf = update["certificate"].as<String>();
  if (why == nullptr) {
    BearSSL::X509List leafAndChain(pemLeaf.c_str());
    leafAndChain.append(update["chain"].as<const char *>());
    why = checkCertificate(leafAndChain);
    if (why == nullptr && serialHex(&leafAndChain) != update["serial"].as<String>()) {
      why = "the serial does not match the certificate";
    }
  }
  if (why != nullptr) {
    Serial.printf("iotfleet: certificate rejected: %s\n", why);
    JsonDocument reply;
    reply["command"] = "certificate";
    reply["ok"] = false;
    reply["error"] = why;
    String body;
    serializeJson(reply, body);
    mqtt.publish(config.statusTopic.c_str(), body.c_str());
    return;
  }
  // The switch ("Switching identity"): the certificate in full, then the key (a re-key), then
  // the certificate. A power cut anywhere is finished or undone at boot (finishIdentitySwitch).
  File f = LittleFS.open("/client.pem.new", "w");
  bool ok = f && f.print(pemLeaf) == pemLeaf.length();
  if (f) f.close();
  if (!ok) {
    LittleFS.remove("/client.pem.new");
    Serial.println("iotfleet: cannot store the new certificate");
    return;
  }
  if (certifiesPendingKey && !LittleFS.rename("/client.key.new", "/client.key")) {
    LittleFS.remove("/client.pem.new");  // nothing renamed: the old pair stays in use
    Serial.println("iotfleet: cannot install the new key");
    return;
  }
  if (!LittleFS.rename("/client.pem.new", "/client.pem")) {
    // The key may be in place already: the boot finishes the switch (or undoes it).
    Serial.println("iotfleet: cannot rename the new certificate; restarting to finish");
    mqtt.disconnect();
    ESP.restart();
  }
  if (certifiesPendingKey) {
    mqtt.publish(config.csrTopic.c_str(), (const uint8_t *)"", 0, true);  // the CSR is answered
  }
  Serial.printf("iotfleet: installed certificate %s; restarting with it\n",
                update["serial"].as<const char *>());
  mqtt.disconnect();  // a switch, not going offline: the next online status says so
  ESP.restart();
}

// -- re-key over the air: a new EC P-256 key and its PKCS#10 CSR, with BearSSL --------------

// DER: tag, length, content appended to ``out``.
void der(String &out, uint8_t tag, const uint8_t *data, size_t len) {
  out += (char)tag;
  if (len < 0x80) {
    out += (char)len;
  } else if (len < 0x100) {
    out += (char)0x81;
    out += (char)len;
  } else {
    out += (char)0x82;
    out += (char)(len >> 8);
    out += (char)(len & 0xff);
  }
  for (size_t i = 0; i < len; i++) out += (char)data[i];
}
void der(String &out, uint8_t tag, const String &content) {
  der(out, tag, (const uint8_t *)content.c_str(), content.length());
}

String pem(const char *banner, const uint8_t *data, size_t len) {
  size_t size = br_pem_encode(nullptr, data, len, banner, BR_PEM_LINE64);
  String out;
  out.reserve(size + 1);
  char *buf = (char *)malloc(size + 1);
  br_pem_encode(buf, data, len, banner, BR_PEM_LINE64);
  out = buf;
  free(buf);
  return out;
}

// CertificationRequest for CN=<device id>, signed with ``sk`` (ecdsa-with-SHA256), as PEM.
String csrPem(const br_ec_private_key *sk) {
  static const uint8_t kEcPublicKey[] = {0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
                                         0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  static const uint8_t kEcdsaSha256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
  static const uint8_t kCommonName[] = {0x06, 0x03, 0x55, 0x04, 0x03};
  uint8_t q[BR_EC_KBUF_PUB_MAX_SIZE + 1];
  br_ec_public_key pk;
  size_t qlen = br_ec_compute_pub(br_ec_get_default(), &pk, q + 1, sk);
  q[0] = 0;  // BIT STRING: no unused bits
  String atv, rdn, name, algo, spki, info, body;
  for (size_t i = 0; i < sizeof kCommonName; i++) atv += (char)kCommonName[i];
  der(atv, 0x0c, config.deviceId);  // UTF8String
  String atvSeq;
  der(atvSeq, 0x30, atv);
  der(rdn, 0x31, atvSeq);
  der(name, 0x30, rdn);
  der(algo, 0x30, kEcPublicKey, sizeof kEcPublicKey);  // AlgorithmIdentifier
  String spkiContent = algo;
  der(spkiContent, 0x03, q, qlen + 1);
  der(spki, 0x30, spkiContent);
  String infoContent;
  const uint8_t zero = 0;
  der(infoContent, 0x02, &zero, 1);  // version 0
  infoContent += name;
  infoContent += spki;
  der(infoContent, 0xa0, nullptr, 0);  // no attributes
  der(info, 0x30, infoContent);
  uint8_t hash[32];
  br_sha256_context sha;
  br_sha256_init(&sha);
  br_sha256_update(&sha, info.c_str(), info.length());
  br_sha256_out(&sha, hash);
  uint8_t sig[80];
  sig[0] = 0;
  size_t siglen = br_ecdsa_i31_sign_asn1(br_ec_get_default(), &br_sha256_vtable, hash, sk, sig + 1);
  body = info;
  String sigAlgo;
  der(sigAlgo, 0x30, kEcdsaSha256, sizeof kEcdsaSha256);
  body += sigAlgo;
  der(body, 0x03, sig, siglen + 1);
  String csr;
  der(csr, 0x30, body);
  return pem("CERTIFICATE REQUEST", (const uint8_t *)csr.c_str(), csr.length());
}

String answeredRequest() {
  String state;
  JsonDocument doc;
  if (!readFile("/rekey.json", state, kMaxConfig) || deserializeJson(doc, state)) return "";
  return doc["request"].as<String>();
}

void rekeyRequest(uint8_t *payload, unsigned int length) {
  if (length == 0) return;  // cleared: answered, or withdrawn
  JsonDocument request;
  if (deserializeJson(request, payload, length) || request["version"] != 1 ||
      config.deviceId != request["device"].as<String>()) {
    Serial.println("iotfleet: re-key request ignored (not for this device)");
    return;
  }
  String id = request["request"].as<String>();
  bool answered = answeredRequest() == id;
  if (answered && pendingKey == nullptr) return;  // done: the certificate came already
  if (request["key_type"] != "ec-p256") {
    Serial.println("iotfleet: re-key request ignored (this firmware makes EC P-256 keys)");
    return;
  }
  if (!answered || pendingKey == nullptr) {
    // A new key from the hardware RNG through HMAC-DRBG; stored before the CSR goes out.
    uint8_t seed[32];
    for (size_t i = 0; i < sizeof seed; i += 4) {
      uint32_t r = ESP.random();
      memcpy(seed + i, &r, 4);
    }
    br_hmac_drbg_context rng;
    br_hmac_drbg_init(&rng, &br_sha256_vtable, seed, sizeof seed);
    uint8_t kbuf[BR_EC_KBUF_PRIV_MAX_SIZE];
    br_ec_private_key sk;
    if (br_ec_keygen(&rng.vtable, br_ec_get_default(), &sk, kbuf, BR_EC_secp256r1) == 0) return;
    uint8_t qbuf[BR_EC_KBUF_PUB_MAX_SIZE];
    br_ec_public_key pk;
    br_ec_compute_pub(br_ec_get_default(), &pk, qbuf, &sk);
    uint8_t pkcs8[200];
    size_t n = br_encode_ec_pkcs8_der(pkcs8, &sk, &pk);
    String keyPemNew = pem("PRIVATE KEY", pkcs8, n);
    memset(kbuf, 0, sizeof kbuf);
    memset(pkcs8, 0, sizeof pkcs8);
    File f = LittleFS.open("/client.key.new.new", "w");
    bool ok = f && f.print(keyPemNew) == keyPemNew.length();
    if (f) f.close();
    if (!ok || !LittleFS.rename("/client.key.new.new", "/client.key.new")) return;
    File s = LittleFS.open("/rekey.json", "w");
    if (s) {
      s.printf("{\"request\":\"%s\"}", id.c_str());
      s.close();
    }
    delete pendingKey;
    pendingKey = new BearSSL::PrivateKey(keyPemNew.c_str());
  }
  JsonDocument answer;
  answer["version"] = 1;
  answer["device"] = config.deviceId;
  answer["request"] = id;
  answer["csr"] = csrPem(pendingKey->getEC());
  String body;
  serializeJson(answer, body);
  mqtt.publish(config.csrTopic.c_str(), body.c_str(), true);
  Serial.println("iotfleet: re-key: new key made, CSR published");
}

void publishTelemetry() {
  JsonDocument doc;
  doc["device"] = config.deviceId;
  doc["seq"] = ++seq;
  doc["uptime_s"] = millis() / 1000;
  doc["heap_free"] = ESP.getFreeHeap();
  doc["rssi"] = WiFi.RSSI();
  String body;
  serializeJson(doc, body);
  mqtt.publish(config.telemetryTopic.c_str(), body.c_str());
}

void onMessage(char *topic, uint8_t *payload, unsigned int length) {
  if (config.certificateTopic == topic) {
    certificateUpdate(payload, length);
    return;
  }
  if (config.rekeyTopic == topic) {
    rekeyRequest(payload, length);
    return;
  }
  String name = String(topic).substring(config.commandsTopic.length() + 1);
  JsonDocument request;
  deserializeJson(request, payload, length);  // commands may carry {"id": ...}
  JsonDocument reply;
  reply["command"] = name;
  reply["ok"] = true;
  if (request["id"].is<JsonVariant>() && !request["id"].isNull()) reply["id"] = request["id"];
  bool restart = false;
  if (name == "ping") {
    reply["reply"] = "pong";
  } else if (name == "telemetry") {
    publishTelemetry();
  } else if (name == "restart") {
    reply["reply"] = "restarting";
    restart = true;
  } else {
    reply["ok"] = false;
    reply["error"] = "unknown command";
  }
  String body;
  serializeJson(reply, body);
  mqtt.publish(config.statusTopic.c_str(), body.c_str());
  if (restart) {
    mqtt.disconnect();
    ESP.restart();
  }
}

uint32_t backoffMs() {
  float base = config.backoffInitial * powf(2.0f, (float)min<uint32_t>(attempts, 16));
  if (base > config.backoffMax) base = config.backoffMax;
  float jitter = base * 0.2f * ((float)random(-1000, 1001) / 1000.0f);  // fleet not in lockstep
  attempts++;
  return (uint32_t)((base + jitter) * 1000.0f);
}

// BrokerOrder.failed: the next broker, or back to the one a move back left.
void brokerFailed() {
  if (leftIndex >= 0) {
    hostIndex = leftIndex;
    leftIndex = -1;
  } else {
    hostIndex = (hostIndex + 1) % config.hostCount;
  }
}

// The first broker before the current one that accepts a TCP connection again (-1: none).
int preferredListening() {
  for (int i = 0; i < hostIndex; i++) {
    WiFiClient probe;
    probe.setTimeout(kProbeTimeoutMs);
    if (probe.connect(config.hosts[i].c_str(), config.mqttPort)) {
      probe.stop();
      return i;
    }
  }
  return -1;
}

bool connectBroker() {
  const String &host = config.hosts[hostIndex];
  tlsClient.setX509Time(time(nullptr));
  mqtt.setServer(host.c_str(), config.mqttPort);
  mqtt.setKeepAlive(config.keepalive);
  time_t onlineAt = time(nullptr);
  String offline = statusJson("offline", onlineAt);
  const char *user = config.username.length() ? config.username.c_str() : nullptr;
  const char *pass = config.username.length() ? config.mqttPass.c_str() : nullptr;
  bool ok = mqtt.connect(config.deviceId.c_str(), user, pass, config.statusTopic.c_str(), 1,
                         true, offline.c_str());
  if (!ok) {
    char err[64];
    tlsClient.getLastSSLError(err, sizeof err);
    Serial.printf("iotfleet: %s:%u refused (mqtt %d, tls: %s)\n", host.c_str(),
                  config.mqttPort, mqtt.state(), err);
    return false;
  }
  mqtt.subscribe(config.commandsFilter.c_str(), 1);
  mqtt.subscribe(config.certificateTopic.c_str(), 1);  // retained: waiting if renewed offline
  mqtt.subscribe(config.rekeyTopic.c_str(), 1);        // retained: waiting if asked offline
  mqtt.publish(config.statusTopic.c_str(), statusJson("online", onlineAt).c_str(), true);
  Serial.printf("iotfleet: connected to %s:%u\n", host.c_str(), config.mqttPort);
  attempts = 0;
  leftIndex = -1;
  online = true;
  return true;
}

}  // namespace

void setup() {
  Serial.begin(115200);
  Serial.println();
  randomSeed(ESP.getChipId() ^ micros());
  loadContract();
  joinWifi();
  setClock();
  mqtt.setBufferSize(kMqttBuffer);
  mqtt.setCallback(onMessage);
}

void loop() {
  if (WiFi.status() != WL_CONNECTED) {
    delay(100);  // the SDK reconnects Wi-Fi by itself
    return;
  }
  if (!mqtt.connected()) {
    if (online) {  // the connection was lost: the next broker, after the back-off
      online = false;
      brokerFailed();
      nextAttemptMs = millis() + backoffMs();
      return;
    }
    uint32_t now = millis();
    if ((int32_t)(now - nextAttemptMs) < 0) return;
    bool returning = leftIndex >= 0;
    if (!connectBroker()) {
      brokerFailed();
      // A failed move back: the broker it left was up a moment ago, at once, no back-off.
      nextAttemptMs = returning ? millis() : millis() + backoffMs();
      return;
    }
    nextTelemetryMs = millis();
    nextLookMs = millis() + kReturnIntervalMs;
  }
  if (hostIndex > 0 && (int32_t)(millis() - nextLookMs) >= 0) {
    nextLookMs = millis() + kReturnIntervalMs;
    int preferred = preferredListening();
    if (preferred >= 0) {
      Serial.printf("iotfleet: %s listens again: moving back to it\n",
                    config.hosts[preferred].c_str());
      leftIndex = hostIndex;
      hostIndex = preferred;
      online = false;
      mqtt.disconnect();  // a move, not going offline; QoS 0: nothing in flight to wait for
      nextAttemptMs = millis();
      return;
    }
  }
  mqtt.loop();
  if ((int32_t)(millis() - nextTelemetryMs) >= 0) {
    publishTelemetry();
    nextTelemetryMs = millis() + config.telemetryInterval * 1000UL;
  }
}
