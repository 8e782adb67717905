// kafkajs's side of tests/kafka_clients/scenario.py: admin, produce and consume commands
// with the same message layout and output format as the Python clients.
//
//   node kafkajs_client.js admin --bootstrap B --topic T --partitions N
//   node kafkajs_client.js produce --bootstrap B --topic T --codec C --first I --end J --keys K
//   node kafkajs_client.js consume --bootstrap B --topic T --group G --out F --stop-file S
'use strict';

const fs = require('fs');
const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');
CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
};

function options(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

// The same messages as scenario.py's message(i).
function message(i, keys) {
  const key = `k${i % keys}`;
  const seq = Math.floor(i / keys);
  const value = `${key}:${seq}:` + 'x'.repeat(i % 50);
  return { key, value, headers: { seq: String(seq), n: String(i) } };
}

async function admin(o) {
  const kafka = new Kafka({ brokers: [o.bootstrap], logLevel: logLevel.WARN });
  const client = kafka.admin();
  await client.connect();
  const created = await client.createTopics({
    topics: [{ topic: o.topic, numPartitions: Number(o.partitions), replicationFactor: 1 }],
    waitForLeaders: true,
  });
  if (!created) throw new Error(`topic ${o.topic} was not created`);
  await client.disconnect();
}

async function produce(o) {
  const kafka = new Kafka({ brokers: [o.bootstrap], logLevel: logLevel.WARN });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const keys = Number(o.keys);
  let batch = [];
  for (let i = Number(o.first); i < Number(o.end); i++) {
    batch.push(message(i, keys));
    if (batch.length === 500 || i + 1 === Number(o.end)) {
      await producer.send({ topic: o.topic, acks: -1, compression: CODECS[o.codec], messages: batch });
      batch = [];
    }
  }
  await producer.disconnect();
}

async function consume(o) {
  const kafka = new Kafka({ brokers: [o.bootstrap], logLevel: logLevel.WARN });
  const consumer = kafka.consumer({
    groupId: o.group,
    sessionTimeout: 6000,
    heartbeatInterval: 500,
    maxBytesPerPartition: 16384,
  });
  const out = fs.openSync(o.out, 'a');
  await consumer.connect();
  await consumer.subscribe({ topic: o.topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachBatch: async ({ batch, heartbeat }) => {
      let lines = '';
      for (const m of batch.messages) {
        const headers = {};
        for (const [k, v] of Object.entries(m.headers || {})) headers[k] = v.toString();
        lines += JSON.stringify({
          p: batch.partition, o: Number(m.offset), k: m.key.toString(), v: m.value.toString(), h: headers,
        }) + '\n';
      }
      fs.writeSync(out, lines);
      if (batch.messages.length > 0) {
        const next = (BigInt(batch.messages[batch.messages.length - 1].offset) + 1n).toString();
        await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: next }]);
      }
      await heartbeat();
      // Slow on purpose, as the Python consumers: about 500 records a second.
      await new Promise((resolve) => setTimeout(resolve, 2 * batch.messages.length));
    },
  });
  while (!fs.existsSync(o['stop-file'])) await new Promise((resolve) => setTimeout(resolve, 100));
  await consumer.disconnect();
  fs.closeSync(out);
}

const [command, ...rest] = process.argv.slice(2);
const commands = { admin, produce, consume };
commands[command](options(rest)).then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
