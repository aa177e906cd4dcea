#!/usr/bin/env python3
"""What one client's own /sync costs Synapse while that client sends: a throwaway Synapse on
loopback (the tests' configuration), a sender that sends N messages one after another, a reader
that long-polls /sync, and, per variant, the sender's own sync:

  nosync         the sender does not sync
  own_plain      it long-polls with the bridge's filter (its own events included)
  own_quiet[_L]  it long-polls with `not_senders: [itself]` (timeline limit L, default 100)
  own_poll_MS    it polls (timeout 0) every MS milliseconds, `not_senders: [itself]`

Usage: synapse-sync-cost.py N VARIANT[,VARIANT...] REPEATS   (variants alternate per repeat)
Prints the sender's accepted rate per run and the median per variant. Needs the test venv
(tests/servers/synapse/install.sh); SPY=file records the run with py-spy, if installed there.
"""
import json, os, sys, time, threading, subprocess, socket, hmac, hashlib, urllib.request, urllib.parse, base64, statistics, tempfile, shutil
HERE=os.path.dirname(os.path.abspath(__file__))
VENV=os.environ.get("SYNAPSE_VENV") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),"tribridge-test","venv-synapse")
TPL=os.path.join(HERE,"..","..","tests","servers","synapse","homeserver.yaml.in")
d=tempfile.mkdtemp(prefix="tribridge-sync-cost-"); os.makedirs(d+"/media_store", exist_ok=True)
s=socket.socket(); s.bind(("127.0.0.1",0)); port=s.getsockname()[1]; s.close()
open(d+"/homeserver.yaml","w").write(open(TPL).read().replace("@DATA@",d).replace("@PORT@",str(port)))
open(d+"/localhost.signing.key","w").write("ed25519 a_test "+base64.b64encode(os.urandom(32)).decode().rstrip("=")+"\n")
log=open(d+"/synapse.log","w")
proc=subprocess.Popen([VENV+"/bin/python","-m","synapse.app.homeserver","-c",d+"/homeserver.yaml"],stdout=log,stderr=log)
B=f"http://127.0.0.1:{port}"
def req(method, path, body=None, token=None, timeout=60):
    r=urllib.request.Request(B+path, method=method, data=None if body is None else json.dumps(body).encode())
    r.add_header("Content-Type","application/json")
    if token: r.add_header("Authorization","Bearer "+token)
    with urllib.request.urlopen(r, timeout=timeout) as resp: return json.loads(resp.read())
for _ in range(600):
    try: req("GET","/_matrix/client/versions"); break
    except Exception: time.sleep(0.1)
def register(user):
    nonce=req("GET","/_synapse/admin/v1/register")["nonce"]
    mac=hmac.new(b"test-shared-secret", digestmod=hashlib.sha1)
    mac.update(f"{nonce}\x00{user}\x00password\x00notadmin".encode())
    return req("POST","/_synapse/admin/v1/register",{"nonce":nonce,"username":user,"password":"password","mac":mac.hexdigest()})["access_token"]
tok={u:register(u) for u in ["sender","reader"]}
def syncer(token, flt, timeout_ms, stop, counter, params="", pause=0):
    since=None
    f=urllib.parse.quote(json.dumps(flt)) if flt is not None else None
    while not stop.is_set():
        q=f"timeout={timeout_ms if since else 0}"
        if since: q+="&since="+since
        if f: q+="&filter="+f
        q+=params
        try: r=req("GET","/_matrix/client/v3/sync?"+q, token=token, timeout=120)
        except Exception as e: print("sync error:",e); continue
        since=r["next_batch"]; counter[0]+=1
        if pause: time.sleep(pause)
def run(variant, N):
    room=req("POST","/_matrix/client/v3/createRoom",{"preset":"public_chat"},token=tok["sender"])["room_id"]
    req("POST",f"/_matrix/client/v3/join/{room}",{},token=tok["reader"])
    stop=threading.Event(); threads=[]; counts={"reader":[0],"own":[0]}
    threads.append(threading.Thread(target=syncer,args=(tok["reader"],None,30000,stop,counts["reader"]),daemon=True))
    own_flt={"room":{"timeline":{"limit":100},"ephemeral":{"not_types":["*"]},"account_data":{"not_types":["*"]}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}
    me="@sender:localhost"
    if variant=="nosync": pass
    elif variant=="own_plain": threads.append(threading.Thread(target=syncer,args=(tok["sender"],own_flt,30000,stop,counts["own"]),daemon=True))
    elif variant.startswith("own_quiet"):
        f=json.loads(json.dumps(own_flt)); f["room"]["timeline"]["not_senders"]=[me]
        lim=int(variant.split("_")[2]) if variant.count("_")>=2 else 100
        f["room"]["timeline"]["limit"]=lim
        threads.append(threading.Thread(target=syncer,args=(tok["sender"],f,30000,stop,counts["own"]),daemon=True))
    elif variant.startswith("own_poll"):
        f=json.loads(json.dumps(own_flt)); f["room"]["timeline"]["not_senders"]=[me]
        ms=int(variant.split("_")[2])
        threads.append(threading.Thread(target=syncer,args=(tok["sender"],f,0,stop,counts["own"],"",ms/1000),daemon=True))
    elif variant=="own_plain_usa": threads.append(threading.Thread(target=syncer,args=(tok["sender"],own_flt,30000,stop,counts["own"],"&use_state_after=true"),daemon=True))
    elif variant=="own_quiet_usa":
        f=json.loads(json.dumps(own_flt)); f["room"]["timeline"]["not_senders"]=[me]
        threads.append(threading.Thread(target=syncer,args=(tok["sender"],f,30000,stop,counts["own"],"&use_state_after=true"),daemon=True))
    for t in threads: t.start()
    time.sleep(1.0)
    t0=time.time()
    for i in range(N):
        req("PUT",f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{variant}{time.time_ns()}",{"msgtype":"m.text","body":f"m{i}"},token=tok["sender"])
    dt=time.time()-t0
    stop.set()
    # wake the syncs so they end
    req("PUT",f"/_matrix/client/v3/rooms/{room}/send/m.room.message/end{time.time_ns()}",{"msgtype":"m.text","body":"end"},token=tok["reader"])
    for t in threads: t.join(timeout=40)
    return N/dt, counts["own"][0]
variants=sys.argv[2].split(",")
N=int(sys.argv[1]); reps=int(sys.argv[3])
res={v:[] for v in variants}
try:
    run("nosync", 50)
    if os.environ.get("SPY"):
        sp=subprocess.Popen([VENV+"/bin/py-spy","record","-p",str(proc.pid),"-r","100","-f","raw","-o",os.environ["SPY"]],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL); time.sleep(2)
    for r in range(reps):
        order=variants if r%2==0 else variants[::-1]
        for v in order:
            rate,syncs=run(v,N); res[v].append(rate); print(r,v,round(rate,1),"own syncs",syncs,flush=True)
    for v in variants: print(v, "median", round(statistics.median(res[v]),1), [round(x,1) for x in res[v]])
finally:
    if os.environ.get("SPY"): sp.send_signal(2); sp.wait()
    proc.terminate(); proc.wait(); log.close(); shutil.rmtree(d, ignore_errors=True)
