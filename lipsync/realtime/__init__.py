"""Real-time avatars: a face prepared once, then speech streamed in small chunks becomes lip-synced frames.

    avatar.py     prepare_avatar(): everything that does not depend on the speech, cached in avatars/NAME/ (ONE
                  writer); Avatar.load() (ONE reader) and Avatar.stream(chunks) -> (timestamp, frame) pairs
    streaming.py  StreamingFeatures (Wav2Vec2 over a sliding window with bounded left and right context),
                  AvatarStream (one stream's audio -> frame jobs), FrameGenerator (the device step of any number
                  of streams' jobs, batched)
    server.py     the WebSocket server: one Scheduler thread batches the jobs of every connection on the GPU
    static/       the page: microphone or file -> server -> frames played in sync with the audio
"""
