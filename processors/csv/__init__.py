"""CSV jobs: ``split`` cuts a file into record-aligned byte ranges, ``read`` parses one range,
``node`` is ``CSVBatchNode``, ``jobs`` the statistics and Parquet jobs, ``seed`` the
pandas-chunk pattern (``SalesChunkStats``)."""
