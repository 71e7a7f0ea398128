// The E2B SDK calls sbx means to serve (docs/e2b-protocol.md); run it with
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at the server under test.
import { Sandbox, CommandExitError, FileNotFoundError } from 'e2b'
import assert from 'node:assert/strict'

const step = (s) => console.log(`\n===== ${s}`)

step('Sandbox.create("base", {timeoutMs: 120_000})')
const sbx = await Sandbox.create('base', { timeoutMs: 120_000 })
console.log('sandboxId', sbx.sandboxId)

step('Sandbox.create() (default template)')
const sbx2 = await Sandbox.create()

step('Sandbox.connect(id)')
const again = await Sandbox.connect(sbx.sandboxId)
assert.equal(again.sandboxId, sbx.sandboxId)

step('Sandbox.list().nextItems()')
const paginator = Sandbox.list({ limit: 1 })
const all = []
while (paginator.hasNext) all.push(...(await paginator.nextItems()))
console.log('listed', all.map((s) => s.sandboxId))
assert.ok(all.some((s) => s.sandboxId === sbx.sandboxId))

step('sandbox.isRunning() / setTimeout()')
assert.equal(await sbx.isRunning(), true)
await sbx.setTimeout(60_000)

step('commands.run("echo hi") with streaming')
const seen = []
const r = await sbx.commands.run('echo hi; echo oops >&2', {
  onStdout: (d) => seen.push(['out', d]),
  onStderr: (d) => seen.push(['err', d]),
  envs: { FOO: 'bar' },
  cwd: '/tmp',
})
console.log('result', r, 'streamed', seen)
assert.equal(r.exitCode, 0)
assert.equal(r.stdout, 'hi\n')
assert.equal(r.stderr, 'oops\n')

step('commands.run non-zero exit -> CommandExitError')
try {
  await sbx.commands.run('exit 3')
  assert.fail('expected throw')
} catch (e) {
  assert.ok(e instanceof CommandExitError, String(e))
  console.log('exitCode', e.exitCode, 'error', e.error)
}

step('background command, list, kill, wait')
const h = await sbx.commands.run('sleep 30', { background: true })
console.log('bg pid', h.pid)
const procs = await sbx.commands.list()
console.log('list', procs)
assert.ok(procs.some((p) => p.pid === h.pid))
assert.equal(await h.kill(), true)
try { await h.wait(); assert.fail('expected throw') } catch (e) {
  assert.ok(e instanceof CommandExitError, String(e))
  console.log('killed: exitCode', e.exitCode, 'error', e.error)
}
assert.equal(await sbx.commands.kill(999999), false) // not_found -> false

step('files.write / read / list / exists / makeDir / remove')
const wi = await sbx.files.write('/home/user/hello.txt', 'hello world')
console.log('write', wi)
assert.equal(await sbx.files.read('/home/user/hello.txt'), 'hello world')
const bytes = await sbx.files.read('/home/user/hello.txt', { format: 'bytes' })
assert.equal(bytes.length, 11)
assert.equal(await sbx.files.makeDir('/home/user/dir'), true)
assert.equal(await sbx.files.makeDir('/home/user/dir'), false) // already_exists -> false
const entries = await sbx.files.list('/home/user')
console.log('list', entries)
assert.ok(entries.some((e) => e.name === 'hello.txt' && e.type === 'file' && e.size === 11))
assert.ok(entries.some((e) => e.name === 'dir' && e.type === 'dir'))
assert.equal(await sbx.files.exists('/home/user/hello.txt'), true)
assert.equal(await sbx.files.exists('/nope'), false)
// Several files at once keep their folders (the eighth review saw each
// land in /home/user under its base name).
const many = await sbx.files.write([{ path: '/tmp/deep/a.txt', data: 'A' }, { path: '/home/user/sub/a.txt', data: 'B' }])
console.log('write many', many)
assert.deepEqual(many.map((w) => w.path), ['/tmp/deep/a.txt', '/home/user/sub/a.txt'])
assert.equal(await sbx.files.read('/tmp/deep/a.txt'), 'A')
assert.equal(await sbx.files.read('/home/user/sub/a.txt'), 'B')
assert.equal(await sbx.files.exists('/home/user/a.txt'), false)
await sbx.files.remove('/home/user/hello.txt')
assert.equal(await sbx.files.exists('/home/user/hello.txt'), false)
try { await sbx.files.read('/home/user/hello.txt'); assert.fail() } catch (e) {
  assert.ok(e instanceof FileNotFoundError, String(e))
}

step('kill')
assert.equal(await sbx.kill(), true)
assert.equal(await sbx2.kill(), true)
assert.equal(await Sandbox.kill(sbx.sandboxId), false) // 404 {code:404} -> false
assert.equal(await sbx.isRunning(), false) // envd /health 502 -> false
console.log('\nALL OK')
